"""Stage-one models: encoder/decoder architectures and the VAE."""
