"""JPEG as a zarr v3 array->bytes codec, one camera frame per (inner) chunk.

Chosen over lossless codecs by measurement (see data/README.md): libjpeg-turbo through simplejpeg
encodes a 480x640 frame in ~1.8 ms and decodes it in ~2 ms at ~60 KB (PSNR ~38 dB), while PNG
takes ~17 ms and 790 KB. simplejpeg releases the GIL, so encoding overlaps the control loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import numpy as np
import simplejpeg
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

CODEC_NAME = "recap_jpeg"


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Encodes a (1, H, W, C) uint8 chunk as one baseline JPEG."""

    is_fixed_size = False
    quality: int = 90

    def __init__(self, *, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(config or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:  # noqa: ANN001 - zarr's signature
        if dtype.to_native_dtype() != np.uint8:
            raise ValueError(f"{CODEC_NAME} needs uint8 data, got {dtype}")

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        frames = arr.reshape(-1, *arr.shape[-3:])
        if frames.shape[0] != 1:
            raise ValueError(f"{CODEC_NAME} encodes one frame per chunk, got chunk shape {arr.shape}")
        frame = frames[0]
        if frame.shape[-1] == 1:
            data = simplejpeg.encode_jpeg(frame, quality=self.quality, colorspace="GRAY")
        else:
            data = simplejpeg.encode_jpeg(frame, quality=self.quality, colorspace="RGB", colorsubsampling="420")
        return chunk_spec.prototype.buffer.from_bytes(data)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        data = chunk_bytes.to_bytes()
        channels = chunk_spec.shape[-1]
        img = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(img.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable-size output


register_codec(CODEC_NAME, JpegCodec)
