"""Cosmos3 video-diffusion pipeline stages, built on real diffusers components."""
