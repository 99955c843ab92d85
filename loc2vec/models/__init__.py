"""Encoders (a fast small CNN, torchvision backbones with a 12-channel stem) and triplet losses."""
