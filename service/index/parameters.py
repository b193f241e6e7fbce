"""A collection's index parameters, the same for both stores (FAISS here, Milvus's FLAT, HNSW and IVF_PQ there):
defaults filled in and bounds checked once, when the collection is created."""

from __future__ import annotations

from offshelf.service.errors import InvalidArgument
from offshelf.service.index.config import CollectionConfig

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
# Upper bounds of index parameters: beyond them a request costs memory or time no collection needs (Milvus's own
# limits are 65,536 lists and an ef of 32,768).
MAX_EF, MAX_NLIST, MAX_REFINE, MAX_TRAIN_SIZE = 10_000, 65_536, 100, 1_000_000


def with_defaults(config: CollectionConfig) -> None:
    """Fills unset index parameters in place and checks them against the dimension."""
    dim = config.binding.dim
    config.index_type = config.index_type or "flat"
    if config.index_type not in INDEX_TYPES:
        raise InvalidArgument(f"unknown index_type {config.index_type!r}; choose one of: {', '.join(INDEX_TYPES)}")
    if config.index_type == "hnsw":
        hnsw = config.hnsw
        hnsw.m = hnsw.m or 32
        hnsw.ef_construction = hnsw.ef_construction or 200
        hnsw.ef_search = hnsw.ef_search or 128
        if min(hnsw.m, hnsw.ef_construction, hnsw.ef_search) < 1 or hnsw.m > 512:
            raise InvalidArgument("hnsw parameters must be positive, and m at most 512")
        if max(hnsw.ef_construction, hnsw.ef_search) > MAX_EF:
            raise InvalidArgument(f"hnsw ef_construction and ef_search must be at most {MAX_EF}")
    if config.index_type == "ivfpq":
        ivf = config.ivfpq
        ivf.nlist = ivf.nlist or 256
        if ivf.nlist > MAX_NLIST:
            raise InvalidArgument(f"ivfpq nlist must be at most {MAX_NLIST}")
        ivf.m = ivf.m or next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0 and m <= max(1, dim // 8))
        ivf.nbits = ivf.nbits or 8
        ivf.nprobe = ivf.nprobe or min(16, ivf.nlist)
        ivf.train_size = ivf.train_size or 40 * ivf.nlist
        ivf.refine_factor = ivf.refine_factor or 10
        if dim % ivf.m:
            raise InvalidArgument(f"ivfpq m={ivf.m} must divide the dimension {dim}")
        if not 1 <= ivf.nbits <= 16 or min(ivf.nlist, ivf.nprobe, ivf.refine_factor) < 1:
            raise InvalidArgument("ivfpq needs nbits in 1..16 and positive nlist, nprobe and refine_factor")
        if ivf.nprobe > ivf.nlist:
            raise InvalidArgument(f"ivfpq nprobe must be at most nlist ({ivf.nlist})")
        if ivf.refine_factor > MAX_REFINE or ivf.train_size > MAX_TRAIN_SIZE:
            raise InvalidArgument(
                f"ivfpq refine_factor must be at most {MAX_REFINE}, and train_size at most {MAX_TRAIN_SIZE}"
            )
        if ivf.train_size < max(ivf.nlist, 1 << ivf.nbits):
            raise InvalidArgument(
                f"ivfpq train_size {ivf.train_size} is below what k-means needs "
                f"(at least nlist={ivf.nlist} and 2^nbits={1 << ivf.nbits} vectors)"
            )
