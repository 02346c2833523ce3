"""Hypothesis strategies for protocol-v1 frame headers: every field either plausible or any JSON.

Shared by the decoder fuzz test (unit) and the live-daemon fuzz test (integration). The values
are the ones that once crashed or stalled the daemon, and their neighbours: unhashable values where a string
is looked up, huge and negative integers, zero dimensions beside huge ones, lone surrogates,
segment names outside the shared-memory format, deep-ish nesting, wrong types for every option.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from daemon.wire.protocol import HANDLER_OPS, MAGIC, PREFIX, WIRE_DTYPES

ODD_STRINGS = [
    "",
    "\ud800",
    "\udfff\ud800",
    "float32",
    "lu0123456789",
    "lu0123456789_1",
    "Local\\Foo",
    "Global\\lu0123456789_1",
    "/dev/shm/x",
    "../../etc/passwd",
    "x" * 300,
    "NaN",
    "<|endoftext|>",
    "(" * 80 + "x" + ")" * 80,
    "embedding:",
    "default",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 2**31, 2**32, 2**53, 2**53 - 1, 2**63, 2**64])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(ODD_STRINGS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


def mostly(valid: st.SearchStrategy, fuzzed: st.SearchStrategy = json_values) -> st.SearchStrategy:
    """``valid`` seven times in eight, else anything: so most frames get past the envelope checks
    and reach the fields behind them."""
    # Not st.one_of(valid, valid, valid, fuzzed): one_of flattens nested one_ofs, so the many
    # branches of json_values would dominate.
    return st.integers(min_value=0, max_value=7).flatmap(lambda pick: fuzzed if pick == 0 else valid)


dims = st.integers(min_value=0, max_value=8) | st.sampled_from([0, 2**28, 2**28 + 1, 2**40, 2**63, 2**64, -1])
shapes = st.lists(dims, max_size=10)
segment_names = st.sampled_from(ODD_STRINGS) | st.from_regex(r"lu[0-9a-f]{10}_[0-9a-f]{1,3}", fullmatch=True)
shm_places = st.fixed_dictionaries(
    {"segment": mostly(segment_names), "offset": mostly(st.integers(min_value=-5, max_value=2**70))}
)
descriptors = st.fixed_dictionaries(
    {
        "dtype": mostly(st.sampled_from([*WIRE_DTYPES, "float64", "object"])),
        "shape": mostly(shapes),
        "nbytes": mostly(st.integers(min_value=-1, max_value=2**64) | st.sampled_from([0, 4, 8, 64])),
    },
    optional={"shm": mostly(shm_places)},
)
options = st.fixed_dictionaries(
    {},
    optional={
        "versions": mostly(st.lists(st.integers(min_value=-1, max_value=3), max_size=3)),
        "client": json_values,
        "token": mostly(st.sampled_from(ODD_STRINGS)),
        "shm": mostly(
            st.fixed_dictionaries(
                {
                    "prefix": mostly(st.sampled_from(ODD_STRINGS)),
                    "probe": mostly(
                        st.fixed_dictionaries(
                            {
                                "segment": mostly(segment_names),
                                "nonce": mostly(st.sampled_from(["00" * 16, "zz" * 16, "0"])),
                            }
                        )
                    ),
                }
            )
        ),
        "wire_dtype": mostly(st.sampled_from(["float32", "float16", "bfloat16", "int8"])),
        "shm_reply": mostly(
            st.fixed_dictionaries(
                {"segment": mostly(segment_names), "offset": json_values, "capacity": json_values}
            )
        ),
        "model": mostly(st.sampled_from(ODD_STRINGS)),
        "text": mostly(st.sampled_from(ODD_STRINGS) | st.text(max_size=40)),
        "tile": json_values,
        "clip_skip": mostly(st.integers(min_value=-30, max_value=3)),
    },
)
#: ops a fuzzer may name: the daemon's own plus nonsense (never ops that block on purpose)
fuzz_ops = mostly(st.sampled_from(["hello", "ping", *HANDLER_OPS, "", "x" * 65, "format_disk"]))
request_headers = st.fixed_dictionaries(
    {
        "v": mostly(st.just(1)),
        "id": mostly(st.integers(min_value=1, max_value=10_000), json_values | st.sampled_from([0, 2**53])),
        "op": fuzz_ops,
    },
    optional={"options": mostly(options), "tensors": mostly(st.lists(descriptors, max_size=9))},
)
#: frames a daemon must refuse (responses and errors sent to it), fuzzed the same way
answer_headers = st.fixed_dictionaries(
    {"v": st.just(1), "id": st.integers(min_value=1, max_value=10_000), "ok": mostly(st.booleans())},
    optional={
        "result": json_values,
        "error": mostly(st.fixed_dictionaries({"code": json_values, "message": json_values})),
        "tensors": mostly(st.lists(descriptors, max_size=2)),
    },
)
headers = st.integers(min_value=0, max_value=5).flatmap(
    lambda pick: answer_headers if pick == 0 else request_headers
)
payload_lengths = st.sampled_from([0, 0, 0, 4, 8, 64, 68, 256])


def frame(header: dict, payload_len: int) -> bytes:
    """One frame: ``header`` as JSON (a lone surrogate travels as the escape ``\\ud800``)."""
    body = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, len(body), payload_len) + body + bytes(payload_len)
