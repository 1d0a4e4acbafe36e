"""Runs on disk: train a config into a run directory, resume it, load it back; its files and plots."""
