"""Test model whose predict kills its worker process: the job can never be answered."""

import os

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse


class SuicidalModel(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        os._exit(9)
