"""Model registrations for presets that ms-swift 4.6 does not support on transformers 5 (docs/design.md §4)."""
