"""Recipes: the tiny random-weight twins of the presets and the embedded CPU defaults of the launchers.

A layer above data building (it builds small speech sets with it) and below the command-line tools."""
