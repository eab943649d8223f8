"""The benchmark kinds: one name each, used everywhere a kind is meant (never a bare string).

A kind names what a case times (its CaseSpec.benchmark, the start of its case name, its pytest test
test_<kind>). Its grid is its entry in bench.core.cases.KINDS, its workload its entry in
bench.measure.workloads.BUILDERS. StrEnum members are strings: they compare equal to the names in
records written before this module, and encode as those names.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    LATENT_PREP = "latent_prep"  # this package's latent-preparation stage, by encode strategy
    DIFFUSERS_PREPARE_LATENTS = "diffusers_prepare_latents"  # diffusers' prepare_latents, shipped or patched
    VAE_ENCODE = "vae_encode"  # the VAE encode alone
    E2E = "e2e"  # a whole request through this package's pipeline
    DIFFUSERS_E2E = "diffusers_e2e"  # a whole request through diffusers' Cosmos3OmniPipeline.__call__
