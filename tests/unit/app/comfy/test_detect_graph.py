"""Detection follows the graph: prompts by sampler input, size from the latent, LoRA targets,
init image, and reports ambiguity instead of guessing silently."""

from __future__ import annotations

import copy

import pytest

from app.comfy.detect import detect_map
from app.comfy.templates import Binding, LoraChainTarget, LoraStackerTarget, load_template


def node(class_type, title=None, **inputs):
    data = {"class_type": class_type, "inputs": inputs}
    if title is not None:
        data["_meta"] = {"title": title}
    return data


def base_graph():
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name="m.safetensors"),
        "2": node("CLIPTextEncode", "Prompt A", text="a cat", clip=["1", 1]),
        "3": node("CLIPTextEncode", "Prompt B", text="blurry", clip=["1", 1]),
        "4": node("EmptyLatentImage", width=832, height=1216, batch_size=1),
        "5": node(
            "KSampler",
            seed=1,
            steps=20,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            denoise=1.0,
            model=["1", 0],
            positive=["2", 0],
            negative=["3", 0],
            latent_image=["4", 0],
        ),
        "6": node("VAEDecode", samples=["5", 0], vae=["1", 2]),
        "7": node("SaveImage", filename_prefix="x", images=["6", 0]),
    }


def bound(detection, name):
    return detection.injection_map.params[name].bindings


@pytest.mark.parametrize("name", ["sdxl_txt2img", "sdxl_img2img", "sdxl_txt2img_luna_daemon"])
def test_detection_reproduces_the_hand_written_maps_of_the_shipped_templates(name):
    template = load_template(name)
    detection = detect_map(template.workflow)
    assert not detection.ambiguities
    for param, spec in detection.injection_map.params.items():
        expected = template.injection_map.params[param]
        assert (spec.kind, spec.bindings, spec.lora) == (expected.kind, expected.bindings, expected.lora), (
            param
        )


def test_positive_and_negative_come_from_the_sampler_inputs_not_the_titles():
    graph = base_graph()
    graph["2"]["_meta"]["title"] = "Negative"  # misleading titles: the graph wins
    graph["3"]["_meta"]["title"] = "Positive"
    detection = detect_map(graph)
    assert bound(detection, "positive") == (Binding("2", "text"),)
    assert bound(detection, "negative") == (Binding("3", "text"),)
    assert {a.param for a in detection.ambiguities} == {"positive", "negative"}
    assert "bound by the graph" in detection.messages()[0]


def test_prompts_are_followed_through_controlnet_and_combine_nodes():
    graph = base_graph()
    graph["8"] = node(
        "ControlNetApplyAdvanced",
        positive=["2", 0],
        negative=["3", 0],
        control_net=["9", 0],
        image=["10", 0],
        strength=1.0,
        start_percent=0.0,
        end_percent=1.0,
    )
    graph["11"] = node("ConditioningZeroOut", conditioning=["8", 1])
    graph["5"]["inputs"].update(positive=["8", 0], negative=["11", 0])
    detection = detect_map(graph)
    assert bound(detection, "positive") == (Binding("2", "text"),)
    assert bound(detection, "negative") == (Binding("3", "text"),)


def test_two_encoders_combined_into_positive_is_reported_as_ambiguous():
    graph = base_graph()
    graph["8"] = node("CLIPTextEncode", "Style positive", text="ink", clip=["1", 1])
    graph["9"] = node("ConditioningCombine", conditioning_1=["2", 0], conditioning_2=["8", 0])
    graph["5"]["inputs"]["positive"] = ["9", 0]
    detection = detect_map(graph)
    assert bound(detection, "positive") == (Binding("8", "text"),)  # the title breaks the tie
    ambiguity = next(a for a in detection.ambiguities if a.param == "positive")
    assert set(ambiguity.candidates) == {"2", "8"}


def test_sampler_settings_and_size_come_from_the_sampler_and_its_latent():
    detection = detect_map(base_graph())
    assert bound(detection, "seed") == (Binding("5", "seed"),)
    assert detection.injection_map.params["seed"].randomize
    for param, input_name in [
        ("steps", "steps"),
        ("cfg", "cfg"),
        ("sampler", "sampler_name"),
        ("scheduler", "scheduler"),
        ("denoise", "denoise"),
    ]:
        assert bound(detection, param) == (Binding("5", input_name),)
    assert bound(detection, "width") == (Binding("4", "width"),)
    assert bound(detection, "height") == (Binding("4", "height"),)
    assert bound(detection, "checkpoint") == (Binding("1", "ckpt_name"),)
    assert detection.injection_map.params["loras"].lora == LoraChainTarget(
        model_source=("1", 0), clip_source=("1", 1)
    )


def test_two_samplers_bind_the_first_pass_and_report_the_other():
    graph = base_graph()
    graph["8"] = node(
        "LatentUpscale",
        samples=["5", 0],
        upscale_method="nearest-exact",
        width=1664,
        height=2432,
        crop="disabled",
    )
    graph["9"] = node(
        "KSampler",
        "Hires pass",
        seed=2,
        steps=10,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=0.5,
        model=["1", 0],
        positive=["2", 0],
        negative=["3", 0],
        latent_image=["8", 0],
    )
    graph["6"]["inputs"]["samples"] = ["9", 0]
    # Sorted id order would put the hires pass first if its id were smaller; make sure it is not chosen.
    graph = {"10" if k == "5" else k: v for k, v in graph.items()}
    for n in graph.values():
        for key, value in n["inputs"].items():
            if value == ["5", 0]:
                n["inputs"][key] = ["10", 0]
    detection = detect_map(graph)
    assert bound(detection, "seed") == (Binding("10", "seed"),)
    assert bound(detection, "width") == (Binding("4", "width"),)
    ambiguity = next(a for a in detection.ambiguities if a.param == "sampler")
    assert ambiguity.candidates == ("10", "9")
    assert "Hires pass" in ambiguity.message


def test_sampler_custom_advanced_parameters_come_from_its_helper_nodes():
    graph = base_graph()
    del graph["5"]
    graph.update(
        {
            "20": node("RandomNoise", noise_seed=42),
            "21": node("CFGGuider", model=["1", 0], positive=["2", 0], negative=["3", 0], cfg=4.5),
            "22": node("KSamplerSelect", sampler_name="euler"),
            "23": node("BasicScheduler", model=["1", 0], scheduler="simple", steps=25, denoise=1.0),
            "24": node(
                "SamplerCustomAdvanced",
                noise=["20", 0],
                guider=["21", 0],
                sampler=["22", 0],
                sigmas=["23", 0],
                latent_image=["4", 0],
            ),
        }
    )
    graph["6"]["inputs"]["samples"] = ["24", 0]
    detection = detect_map(graph)
    assert bound(detection, "seed") == (Binding("20", "noise_seed"),)
    assert bound(detection, "cfg") == (Binding("21", "cfg"),)
    assert bound(detection, "sampler") == (Binding("22", "sampler_name"),)
    assert bound(detection, "steps") == (Binding("23", "steps"),)
    assert bound(detection, "positive") == (Binding("2", "text"),)
    assert bound(detection, "negative") == (Binding("3", "text"),)
    assert bound(detection, "width") == (Binding("4", "width"),)
    assert detection.injection_map.params["loras"].lora.model_source == ("1", 0)


def test_a_seed_from_a_primitive_node_is_bound_where_the_value_lives():
    graph = base_graph()
    graph["8"] = node("PrimitiveInt", "Seed", value=123)
    graph["5"]["inputs"]["seed"] = ["8", 0]
    assert bound(detect_map(graph), "seed") == (Binding("8", "value"),)


def test_sdxl_text_encoders_bind_both_texts_and_the_size_conditioning():
    graph = base_graph()
    graph["2"] = node(
        "CLIPTextEncodeSDXL",
        "Positive",
        clip=["1", 1],
        width=4096,
        height=4096,
        crop_w=0,
        crop_h=0,
        target_width=1024,
        target_height=1024,
        text_g="a cat",
        text_l="a cat",
    )
    detection = detect_map(graph)
    assert bound(detection, "positive") == (Binding("2", "text_g"), Binding("2", "text_l"))
    assert bound(detection, "width") == (
        Binding("4", "width"),
        Binding("2", "width"),
        Binding("2", "target_width"),
    )


def test_a_lora_loader_chain_is_found_in_model_order():
    graph = base_graph()
    graph["12"] = node(
        "LoraLoader", model=["1", 0], clip=["1", 1], lora_name="a", strength_model=1.0, strength_clip=1.0
    )
    graph["11"] = node(
        "LoraLoader", model=["12", 0], clip=["12", 1], lora_name="b", strength_model=1.0, strength_clip=1.0
    )
    graph["5"]["inputs"]["model"] = ["11", 0]
    graph["2"]["inputs"]["clip"] = graph["3"]["inputs"]["clip"] = ["11", 1]
    detection = detect_map(graph)
    assert detection.injection_map.params["loras"].lora == LoraChainTarget(nodes=("12", "11"))
    assert not detection.ambiguities


def test_the_luna_lora_stacker_slots_are_detected_from_its_inputs():
    graph = base_graph()
    graph["30"] = node(
        "LunaLoRAStacker",
        "Luna LoRA Stacker",
        enabled=True,
        show_previews=True,
        **{
            f"{k}_{i}": v
            for i in range(1, 5)
            for k, v in (("lora", "None"), ("strength", 1.0), ("enabled", False))
        },
    )
    detection = detect_map(graph)
    assert detection.injection_map.params["loras"].lora == LoraStackerTarget(
        node="30",
        name="lora_{i}",
        model_strength="strength_{i}",
        clip_strength=None,
        enabled="enabled_{i}",
        slots=4,
    )


def test_a_stacker_with_model_and_clip_strengths_is_detected():
    graph = base_graph()
    graph["30"] = node(
        "LoraStacker",
        **{
            f"{k}_{i}": v
            for i in range(1, 4)
            for k, v in (("lora_name", "None"), ("model_strength", 1.0), ("clip_strength", 1.0))
        },
    )
    target = detect_map(graph).injection_map.params["loras"].lora
    assert (target.name, target.model_strength, target.clip_strength, target.enabled, target.slots) == (
        "lora_name_{i}",
        "model_strength_{i}",
        "clip_strength_{i}",
        None,
        3,
    )


def test_daemon_text_encoders_get_model_only_loras():
    template = load_template("sdxl_txt2img_luna_daemon")
    target = detect_map(template.workflow).injection_map.params["loras"].lora
    assert target == LoraChainTarget(model_source=("4", 0), clip_source=None)


def test_init_image_prefers_the_loader_encoded_into_the_sampler_latent():
    graph = load_template("sdxl_img2img").workflow
    graph = copy.deepcopy(graph)
    graph["50"] = node("LoadImage", "Pose reference", image="pose.png")
    detection = detect_map(graph)
    assert bound(detection, "init_image") == (Binding("10", "image"),)
    assert any(a.param == "init_image" for a in detection.ambiguities)
    assert "width" not in detection.injection_map.params


def test_without_a_sampler_titles_are_the_fallback_and_it_is_said():
    graph = {
        "1": node("CLIPTextEncode", "Negative prompt", text="bad", clip=["9", 1]),
        "2": node("CLIPTextEncode", "Main", text="good", clip=["9", 1]),
    }
    detection = detect_map(graph)
    assert bound(detection, "positive") == (Binding("2", "text"),)
    assert bound(detection, "negative") == (Binding("1", "text"),)
    messages = " | ".join(detection.messages())
    assert "no sampler found" in messages and "title only" in messages and "no 'seed'" in messages


def test_ksampler_advanced_and_sd3_latent_are_detected():
    graph = base_graph()
    graph["4"] = node("EmptySD3LatentImage", width=1024, height=768, batch_size=2)
    graph["5"] = node(
        "KSamplerAdvanced",
        add_noise="enable",
        noise_seed=5,
        steps=30,
        cfg=4.0,
        sampler_name="euler",
        scheduler="sgm_uniform",
        start_at_step=0,
        end_at_step=10000,
        return_with_leftover_noise="disable",
        model=["1", 0],
        positive=["2", 0],
        negative=["3", 0],
        latent_image=["4", 0],
    )
    graph["12"] = node("PrimitiveStringMultiline", value="a castle")
    graph["2"]["inputs"]["text"] = ["12", 0]
    detection = detect_map(graph)
    assert bound(detection, "seed") == (Binding("5", "noise_seed"),)
    assert bound(detection, "scheduler") == (Binding("5", "scheduler"),)
    assert "denoise" not in detection.injection_map.params
    assert bound(detection, "height") == (Binding("4", "height"),)
    assert bound(detection, "batch_size") == (Binding("4", "batch_size"),)
    assert bound(detection, "positive") == (Binding("12", "value"),)
