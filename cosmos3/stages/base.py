"""The stage contract: check the request's inputs, then `forward(req) -> req`. Stages never time themselves."""

from __future__ import annotations

import abc

from cosmos3.request import Req


class PipelineStage(abc.ABC):
    """One step of the Cosmos3 pipeline. The pipeline wrapper validates, runs and times every stage."""

    #: Short name used in stage tables and traces ("latent_preparation", ...).
    name: str = ""

    def check_inputs(self, req: Req) -> None:
        """Raise InputError naming the field when the request cannot enter this stage."""
        req.validate()

    @abc.abstractmethod
    def forward(self, req: Req) -> Req: ...

    def __call__(self, req: Req) -> Req:
        self.check_inputs(req)
        return self.forward(req)
