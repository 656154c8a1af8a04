"""Test model for the batch path (worker.batch_jobs): each row is [seconds, tag]; a batch
sleeps its longest row's seconds, logs the tags it runs, and echoes its rows with the batch
size. A negative tag fails the whole call."""

import logging

import anyio
import numpy as np

from conveyor import MLModel
from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse

logger = logging.getLogger(__name__)


class SlowBatched(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        tags = ",".join(str(int(tag)) for tag in x[:, 1])
        logger.info("slow_batched.running rows=%d tags=%s", x.shape[0], tags)
        if (x[:, 1] < 0).any():
            raise ValueError("negative tag")
        await anyio.sleep(float(x[:, 0].max()))
        rows = np.full((x.shape[0], 1), x.shape[0], dtype=np.int64)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("y", x), NumpyCodec.encode_output("rows", rows)],
        )
