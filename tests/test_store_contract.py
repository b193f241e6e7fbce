"""The collection store's contract (service/index/contract.py), in process and without a gRPC server: the same
cases against both stores, the embedded one (SQLite + FAISS) in a temporary folder and the real Milvus standalone.
What is about the wire (validation of requests, statuses, auth, streaming) is tested through a server elsewhere."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from offshelf.service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from offshelf.service.index.config import CollectionConfig, HnswParams, IvfPqParams, Metric
from offshelf.service.index.contract import CollectionCatalog, CollectionStore, Filter
from offshelf.service.index.embedded.collection import Collection as EmbeddedCollection
from offshelf.service.index.embedded.registry import CollectionRegistry
from offshelf.service.index.parameters import with_defaults
from offshelf.service.models.binding import Binding

from common import clustered_vectors, until

DIM = 16
COUNT = 40


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def catalog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectionCatalog]:
    store: CollectionCatalog
    if request.param == "embedded":
        store = CollectionRegistry(tmp_path_factory.mktemp("contract"), index_save_seconds=60, faiss_threads=0)
    else:
        from offshelf.service.index.milvus.registry import MilvusCollectionRegistry

        store = MilvusCollectionRegistry(request.getfixturevalue("milvus").uri, "", "", "Strong")
    store.load_all()
    yield store
    store.close()


def configured(name: str, metric: Metric = Metric.L2) -> CollectionConfig:
    config = CollectionConfig(name, Binding(dim=DIM), metric)
    with_defaults(config)
    return config


@pytest.fixture
def collection(catalog: CollectionCatalog) -> Iterator[CollectionStore]:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    yield catalog.create(configured(name))
    with contextlib.suppress(NotFound):
        catalog.delete(name)


def filled(collection: CollectionStore) -> tuple[list[str], np.ndarray]:
    """COUNT items id-00.., labels c0/c1 alternating, metadata shard 0-2; returns their ids and vectors."""
    vectors = clustered_vectors(COUNT, DIM, seed=1)
    items = [(f"id-{i:02d}", f"c{i % 2}", {"shard": str(i % 3)}) for i in range(COUNT)]
    ids, count = collection.add(items, collection.prepare(vectors))
    assert count == COUNT
    return ids, vectors


def test_added_items_are_read_back_counted_and_paged_in_id_order(collection):
    ids, vectors = filled(collection)
    assert ids == [f"id-{i:02d}" for i in range(COUNT)]
    found = collection.get(["id-03", "absent"])
    assert list(found) == ["id-03"]
    row, vector = found["id-03"]
    assert (row.id, row.label, row.metadata) == ("id-03", "c1", {"shard": "0"})
    np.testing.assert_allclose(vector, vectors[3], rtol=1e-6)
    assert collection.info().count == COUNT
    pages, after = [], ""
    while page := collection.page(after, 16, Filter(), with_vectors=False):
        pages.append([r.id for r, v in page if v is None])
        after = page[-1][0].id
    assert [len(p) for p in pages] == [16, 16, 8] and sum(pages, []) == ids
    selected = collection.page("", 100, Filter(labels=("c0",), metadata=(("shard", ("1",)),)), with_vectors=True)
    assert [r.id for r, _ in selected] == [f"id-{i:02d}" for i in range(COUNT) if i % 2 == 0 and i % 3 == 1]


def test_an_add_with_an_existing_id_replaces_the_item(collection):
    ids, vectors = filled(collection)
    _, count = collection.add([("id-05", "new", {"k": "v"})], collection.prepare(vectors[:1]))
    assert count == COUNT
    row, vector = collection.get(["id-05"])["id-05"]
    assert (row.label, row.metadata) == ("new", {"k": "v"})
    np.testing.assert_allclose(vector, vectors[0], rtol=1e-6)


def test_items_are_removed_by_id_and_by_filter(collection):
    filled(collection)
    assert collection.remove(["id-00", "absent"]) == (1, ["absent"], COUNT - 1)
    removed, count = collection.remove_where(Filter(labels=("c1",)))
    assert (removed, count) == (COUNT // 2, COUNT // 2 - 1)
    assert not collection.get(["id-00", "id-01"])
    assert collection.search(collection.stored_vectors()[:1], k=COUNT)[0][0][2] == "c0"


def test_thumbnails_are_kept_apart_replaced_with_their_item_and_removed_with_it(catalog):
    """Thumbnails stay through whitening and a rewrite of the vectors, go when their item is replaced without one
    or removed (by id, by filter, with the collection)."""
    name = f"thumbs-{uuid.uuid4().hex[:8]}"
    config = configured(name, Metric.INNER_PRODUCT)
    config.thumbnail_size = 64
    collection = catalog.create(config)
    vectors = clustered_vectors(8, DIM, seed=3)
    items = [(f"t{i}", f"c{i % 2}", {}) for i in range(8)]
    jpegs = [f"jpeg-{i}".encode() for i in range(8)]
    collection.add(items, collection.prepare(vectors), [*jpegs[:7], b""])
    assert collection.thumbnails(["t0", "t6", "t7", "absent"]) == {"t0": b"jpeg-0", "t6": b"jpeg-6"}
    collection.add(items[:1], collection.prepare(vectors[:1]))  # t0 replaced without a thumbnail
    collection.add(items[1:2], collection.prepare(vectors[1:2]), [b"jpeg-1b"])  # t1 with a new one
    assert collection.thumbnails(["t0", "t1"]) == {"t1": b"jpeg-1b"}
    collection.train_whitening(4)
    if isinstance(collection, EmbeddedCollection):  # augmentation is the embedded store's
        collection.augment(1, 3.0)
    assert collection.thumbnails(["t1", "t2"]) == {"t1": b"jpeg-1b", "t2": b"jpeg-2"}
    collection.remove(["t2"])
    collection.remove_where(Filter(labels=("c1",)))  # t1, t3, t5, t7
    assert collection.thumbnails([f"t{i}" for i in range(8)]) == {"t4": b"jpeg-4", "t6": b"jpeg-6"}
    catalog.delete(name)
    again = catalog.create(config)  # a collection of the same name starts without them
    assert again.thumbnails(["t4", "t6"]) == {}
    catalog.delete(name)


def test_each_vector_finds_its_item_first_and_a_filter_selects_among_them(collection):
    ids, vectors = filled(collection)
    hits = collection.search(vectors, k=3)
    assert [row[0][0] for row in hits] == ids
    assert all(len(row) == 3 for row in hits)
    shard_one = collection.search(vectors[:2], k=COUNT, where=Filter(metadata=(("shard", ("1",)),)))
    assert all(meta == {"shard": "1"} for row in shard_one for _, _, _, meta in row)
    assert [len(row) for row in shard_one] == [len([i for i in range(COUNT) if i % 3 == 1])] * 2
    with pytest.raises(InvalidArgument, match="inner-product"):  # L2 scores are distances
        collection.search(vectors[:1], k=1, min_score=0.5)


def test_search_by_an_items_own_vector(collection):
    filled(collection)
    assert collection.search(collection.vector_of("id-07")[None], k=1)[0][0][0] == "id-07"
    with pytest.raises(NotFound):
        collection.vector_of("absent")


def test_a_filter_on_a_metadata_key_no_item_has_is_refused(collection):
    filled(collection)
    collection.check_filter(Filter(metadata=(("shard", ("0",)),)))
    with pytest.raises(InvalidArgument, match="shrad"):
        collection.check_filter(Filter(metadata=(("shrad", ("0",)),)))


def test_labelled_vectors_are_what_heads_train_on(collection):
    ids, vectors = filled(collection)
    collection.add([("unlabelled", "", {})], collection.prepare(vectors[:1]))
    found, labels = collection.labelled_vectors()
    assert sorted(labels) == sorted(f"c{i % 2}" for i in range(COUNT)) and found.shape == (COUNT, DIM)


def test_whitening_keeps_every_item_findable(collection):
    ids, vectors = filled(collection)
    collection.train_whitening(8)
    assert collection.info().config.whitening_dim == 8
    assert [row[0][0] for row in collection.search(vectors, k=1)] == ids
    np.testing.assert_allclose(collection.get(["id-09"])["id-09"][1], vectors[9], rtol=1e-5)  # as added


def test_whitening_is_learned_from_another_collections_stored_vectors(catalog, collection):
    """TrainWhitening's learn_from: the sample is the other collection's vectors as added (issue 17)."""
    source = catalog.create(configured(f"contract-{uuid.uuid4().hex[:8]}"))
    try:
        filled(source)
        vectors = clustered_vectors(6, DIM, seed=2)
        ids, _ = collection.add([(f"own-{i}", "", {}) for i in range(6)], collection.prepare(vectors))
        with pytest.raises(FailedPrecondition, match="needs more than 12 vectors; collection 'x' has 6"):
            collection.train_whitening(12, vectors, "x")  # the check counts the sample, and names where it came from
        collection.train_whitening(12, source.stored_vectors(), source.name)  # its own 6 are too few for 12
        assert (collection.info().config.whitening_dim, collection.info().count) == (12, 6)
        assert [row[0][0] for row in collection.search(vectors, k=1)] == ids
    finally:
        catalog.delete(source.name)


def test_a_name_is_created_once_and_a_deleted_collection_is_gone(catalog):
    name = f"contract-{uuid.uuid4().hex[:8]}"
    catalog.create(configured(name))
    with pytest.raises(AlreadyExists):
        catalog.create(configured(name))
    assert name in [c.name for c in catalog.all()]
    catalog.delete(name)
    with pytest.raises(NotFound):
        catalog.get(name)
    assert catalog.create(configured(name)).info().count == 0
    catalog.delete(name)


def test_query_expansion_and_min_score_on_similarities(catalog):
    name = f"contract-{uuid.uuid4().hex[:8]}"
    collection = catalog.create(configured(name, Metric.INNER_PRODUCT))
    try:
        ids, vectors = filled(collection)
        plain = collection.search(vectors[:4], k=5)
        expanded = collection.search(vectors[:4], k=5, expansion=3, alpha=3.0, own_ids=ids[:4])
        assert [row[0][0] for row in expanded] == ids[:4]  # each still finds itself first
        assert all(e[0][1] < p[0][1] for e, p in zip(expanded, plain, strict=True))  # an expanded query is not itself
        between = (plain[0][0][1] + plain[0][1][1]) / 2  # similarities: the best hit's and the second's
        assert collection.search(vectors[:1], k=5, min_score=between) == [plain[0][:1]]
    finally:
        catalog.delete(name)


# --- index types: hnsw and ivfpq against exact flat search, on clustered vectors like embeddings ------------------

TYPES_DIM = 1280


def recall_at_10(collection: CollectionStore, truth: list[list[str]], queries: np.ndarray, **search) -> float:
    found = [[hit[0] for hit in row] for row in collection.search(queries, k=10, **search)]
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))


@pytest.fixture(scope="module")
def typed(catalog: CollectionCatalog) -> Iterator[tuple[dict[str, CollectionStore], np.ndarray, np.ndarray]]:
    """Collections flat, hnsw and ivfpq (trained from 2,000 vectors) holding the first 1,500 of 3,000 vectors."""
    vectors = clustered_vectors(3000, TYPES_DIM, seed=0)
    queries = vectors[::60] + 0.05 * clustered_vectors(50, TYPES_DIM, seed=1)
    suffix = uuid.uuid4().hex[:8]
    configs = {
        "flat": CollectionConfig(f"types-flat-{suffix}", Binding(dim=TYPES_DIM)),
        "hnsw": CollectionConfig(
            f"types-hnsw-{suffix}", Binding(dim=TYPES_DIM), index_type="hnsw", hnsw=HnswParams(16, 100)
        ),
        "ivfpq": CollectionConfig(
            f"types-ivfpq-{suffix}",
            Binding(dim=TYPES_DIM),
            index_type="ivfpq",
            ivfpq=IvfPqParams(nlist=32, train_size=2000),
        ),
    }
    collections = {}
    for kind, config in configs.items():
        with_defaults(config)
        collections[kind] = catalog.create(config)
        for start in range(0, 1500, 500):
            add_range(collections[kind], vectors, start, start + 500)
    yield collections, vectors, queries
    for config in configs.values():
        catalog.delete(config.name)


def add_range(collection: CollectionStore, vectors: np.ndarray, start: int, stop: int) -> None:
    collection.add([(str(i), "", {}) for i in range(start, stop)], collection.prepare(vectors[start:stop]))


def fill_and_train(collections: dict[str, CollectionStore], vectors: np.ndarray, queries: np.ndarray) -> None:
    """Adds the second 1,500 vectors (once) and waits until ivfpq has trained (embedded), searching meanwhile."""
    if collections["ivfpq"].info().count == 3000:
        return
    for collection in collections.values():
        for start in range(1500, 3000, 500):
            add_range(collection, vectors, start, start + 500)
    if isinstance(collections["ivfpq"], EmbeddedCollection):

        def trained() -> bool:
            collections["ivfpq"].search(queries[:1], k=10)  # searches go on while it trains
            return collections["ivfpq"].info().trained

        until(trained, 120, "ivfpq training")


def test_ivfpq_answers_exactly_until_trained_then_trains_in_the_background(typed):
    collections, vectors, queries = typed
    if not isinstance(collections["ivfpq"], EmbeddedCollection):
        pytest.skip("Milvus builds IVF_PQ per sealed segment on its own schedule; until then it searches exactly")
    if collections["ivfpq"].info().count < 2000:
        assert not collections["ivfpq"].info().trained  # below train_size
        assert collections["ivfpq"].search(queries[:10], k=10) == collections["flat"].search(queries[:10], k=10)
    fill_and_train(collections, vectors, queries)
    assert collections["ivfpq"].info().trained and collections["ivfpq"].info().count == 3000


def test_hnsw_and_ivfpq_reach_recall_at_10_of_0_9_against_flat(typed):
    collections, vectors, queries = typed
    fill_and_train(collections, vectors, queries)
    truth = [[hit[0] for hit in row] for row in collections["flat"].search(queries, k=10)]
    assert recall_at_10(collections["hnsw"], truth, queries) >= 0.9
    assert recall_at_10(collections["hnsw"], truth, queries, ef_search=256) >= 0.9
    assert recall_at_10(collections["ivfpq"], truth, queries) >= 0.9
    assert recall_at_10(collections["ivfpq"], truth, queries, nprobe=32) >= 0.9


def test_removed_items_never_come_back_from_hnsw_or_ivfpq(typed):
    collections, vectors, queries = typed
    fill_and_train(collections, vectors, queries)
    for kind in ("hnsw", "ivfpq"):
        collection = collections[kind]
        assert collection.search(vectors[7:8], k=1)[0][0][0] == "7"
        collection.remove(["7", "8"])
        assert {"7", "8"}.isdisjoint(hit[0] for hit in collection.search(vectors[7:8], k=50)[0])
        add_range(collection, vectors, 7, 9)
        assert collection.search(vectors[7:8], k=1)[0][0][0] == "7"
