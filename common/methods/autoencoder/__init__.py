"""The autoencoder method's parameters, read by its server strategy and its client trainer."""

from dataclasses import dataclass

from fedsqueeze.methods.base import MethodParams, param


@dataclass(frozen=True)
class AutoencoderParams(MethodParams):
    method = "ae"

    warmup: int = param(3, "plain rounds a client sends before its autoencoder is trained")
    warmup_codec: str = param("cluster(k=16)|zstd", "codec plan of the warm-up updates")
    chunk: int = param(3136, "update elements per autoencoder input")
    latent: int = param(16, "latent values per chunk")
    hidden: int = param(64, "hidden units of encoder and decoder (half on devices with budget <= 0.5)")
    activation: str = param("linear", "autoencoder activation: linear, relu or tanh")
    latent_codec: str = param("cluster(k=16)|zstd", "codec pipeline after the latent stage")
    correction: str = param("", "pipeline for a sparse correction of what the latents miss (empty: none)")
    coarse: str = param("", "pipeline for a coarse part sent before the latents (empty: none)")
    decoder_codec: str = param("dense(dtype=float16)|zstd", "codec of the decoder weights sent at registration")
    ae_epochs: int = param(60, "autoencoder training epochs on the client")
    ae_lr: float = param(1e-3, "autoencoder learning rate (Adam)")
    drift: float = param(0.25, "retrain the autoencoder when its error grows by this share (0: never)")
    history: int = param(8, "recent updates a client keeps to train its autoencoder on")

    def check(self) -> None:
        if self.warmup < 1:
            raise ValueError("ae: warmup must be >= 1 round (the autoencoder needs updates to learn from)")
        if min(self.chunk, self.latent, self.hidden, self.ae_epochs, self.history) < 1 or not self.ae_lr > 0:
            raise ValueError("ae: chunk, latent, hidden, ae_epochs and history must be >= 1 and ae_lr > 0")
        if self.latent >= self.chunk:
            raise ValueError(f"ae: latent ({self.latent}) must be smaller than chunk ({self.chunk})")
        if self.drift < 0:
            raise ValueError("ae: drift must be >= 0")
