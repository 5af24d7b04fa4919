"""Networks: stage one's VAE and architectures, stage two's refiner U-Net and
flow layers, the conditioning they read (c = (z, dec(z))), the shared
convolution layers and the Inception network of FID."""
