"""The Cosmos3 pipeline stages, named as upstream."""

from cosmos3.stages.base import PipelineStage
from cosmos3.stages.decoding import Cosmos3DecodingStage
from cosmos3.stages.denoising import Cosmos3DenoisingStage
from cosmos3.stages.latent_preparation import ENCODE_STRATEGIES, Cosmos3LatentPreparationStage, EncodeStrategy
from cosmos3.stages.preprocess import Cosmos3ImagePreprocessStage
from cosmos3.stages.timestep_preparation import Cosmos3TimestepPreparationStage

__all__ = [
    "ENCODE_STRATEGIES",
    "Cosmos3DecodingStage",
    "Cosmos3DenoisingStage",
    "Cosmos3ImagePreprocessStage",
    "Cosmos3LatentPreparationStage",
    "Cosmos3TimestepPreparationStage",
    "EncodeStrategy",
    "PipelineStage",
]
