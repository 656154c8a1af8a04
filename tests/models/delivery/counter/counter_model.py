"""Test model: counts its runs. ``predict`` sleeps ``sleep`` seconds (a request parameter),
then appends the worker's pid as one line to the file named by the parameter ``record`` (if
any), and answers with the pid and the request's first input ``x``."""

import os
from pathlib import Path

import anyio

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


def _record(path: str) -> None:
    with Path(path).open("a") as file:
        file.write(f"{os.getpid()}\n")


class Counter(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        extra = (payload.parameters.model_extra or {}) if payload.parameters else {}
        await anyio.sleep(float(str(extra.get("sleep", 0.0))))
        if extra.get("record"):
            _record(str(extra["record"]))
        x = payload.inputs[0]
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                ResponseOutput(name="pid", shape=[1], datatype="INT64", data=[os.getpid()]),
                ResponseOutput(name="x", shape=x.shape, datatype=x.datatype, data=x.data),
            ],
        )
