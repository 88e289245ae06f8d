"""PyTorch only: the recurrent VAE-GAN and its losses. Knows nothing of Kafka or River."""

from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN

__all__ = ["ModelConfig", "RecurrentVAEGAN"]
