"""Files in and out: component and pipeline folders, safetensors checks, crash-safe writes,
the diffusers converters, image folders and PNG/GIF output."""
