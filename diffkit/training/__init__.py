"""Training: objectives (ε/x0/v, Min-SNR-γ, hybrid L_vlb), EMA, checkpoints, the trainer, the KL autoencoder."""

from diffkit.training.autoencoder import (
    AutoencoderResult,
    AutoencoderTrainConfig,
    encode_dataset,
    latent_scaling_factor,
    psnr,
    reconstruction_psnr,
    train_autoencoder,
    with_scaling_factor,
)
from diffkit.training.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from diffkit.training.data import InMemoryData, as_training_data
from diffkit.training.ema import EMA
from diffkit.training.objectives import Objective, diffusion_loss, min_snr_weight, training_target
from diffkit.training.trainer import TrainConfig, Trainer, TrainResult

__all__ = [
    "EMA", "AutoencoderResult", "AutoencoderTrainConfig", "InMemoryData", "Objective", "TrainConfig",
    "TrainResult", "Trainer", "as_training_data", "diffusion_loss", "encode_dataset", "latent_scaling_factor",
    "latest_checkpoint", "list_checkpoints", "load_checkpoint", "min_snr_weight", "psnr",
    "reconstruction_psnr", "save_checkpoint", "train_autoencoder", "training_target", "with_scaling_factor",
]
