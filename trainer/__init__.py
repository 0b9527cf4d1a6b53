"""TARS on ms-swift: the library core (trainer, rewards, advantages, prompts, data schema, presets)."""
