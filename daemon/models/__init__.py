"""Model layer of the daemon: real SD/SDXL VAE and CLIP text encoders (torch + safetensors)."""
