"""Turn decoded frames into model outputs and model outputs into images. Batched, on the model's device."""
