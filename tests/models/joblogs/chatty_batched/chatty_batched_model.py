"""Test model: logs a line inside predict, through conveyor.logging and through a logger of its
own (its lines carry the job's request id), then answers with its inputs."""

import logging

from conveyor import MLModel
from conveyor.logging import logger
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput

own = logging.getLogger("chatty")


class Chatty(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        logger.info("%s.predicted inputs=%d", self.name, len(payload.inputs))
        own.warning("%s.own_logger says=hello", self.name)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=i.data)
                for i in payload.inputs
            ],
        )
