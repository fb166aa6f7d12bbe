"""Model surgery before a run: LoRA adapters (through peft). Nothing here trains; `plinth.training` does."""
