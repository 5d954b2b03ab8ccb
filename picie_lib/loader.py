"""The batches of a pass: the data set's items in a given order, read by data-loader workers, without the
items whose file is bad, and under torchrun split between the processes (``distributed.rank_batches``).

On a GPU the workers only read the files (``SceneDataset.encoded``: an image's bytes, and in eval mode its label
map); each batch's JPEGs are decoded together on the GPU, and its views cut or its evaluation crops made there
(``SceneDataset.train_views`` / ``eval_pairs``), in a thread of their own while the pass runs the network on the
batch before (``MadeAhead``). Without a GPU the workers make the items with the same functions on CPU tensors.

Workers start from a fork server (``worker_context``) and end with the training process
(``exit_with_the_training_process``); a batch is cut into chunks that all workers make at once and joined
here in order, so the batches are the same for any ``num_workers``.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import sys
import threading
from contextlib import ExitStack
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from picie_lib import distributed
from picie_lib.config import Config
from picie_lib.data.base import BadFile, SkippedItem, skip
from picie_lib.distributed import resolve_device


def _usable_and_skipped(items: list) -> tuple[list, list[SkippedItem]]:
    skipped = [item for item in items if isinstance(item, SkippedItem)]
    return [item for item in items if not isinstance(item, SkippedItem)], skipped


def collate_usable(items: list):
    """``(batch or None, skipped)``: the items a worker could read, batched, and the ``SkippedItem``s."""
    usable, skipped = _usable_and_skipped(items)
    return (default_collate(usable) if usable else None), skipped


class Encoded(Dataset):
    """A data set's items as the workers read them when the batches are made on the device: ``(index,
    encoded)`` (``SceneDataset.encoded``: a file's bytes, in eval mode with its label), or a ``SkippedItem``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return index, self.dataset.encoded(index)
        except BadFile as err:
            return skip(index, err)


class EncodedChunk(NamedTuple):
    """A chunk of ``Encoded`` items in two tensors whatever its length: each tensor that crosses from a worker
    holds a file descriptor while it lives, and a batch of 256 files, one tensor each, would hold hundreds."""

    indices: list[int]
    pixels: torch.Tensor  # every item's bytes or image, flattened and joined (uint8)
    shapes: list[tuple[int, ...]]
    labels: torch.Tensor | None  # eval mode: the label maps cut to res, stacked (int16), in item order
    entries: list | None  # eval mode, per item: None (no labels), a BadFile, or the label map's size before the cut


def collate_encoded(items: list) -> tuple[EncodedChunk | None, list[SkippedItem]]:
    """``(the chunk or None, skipped)``: ``Encoded``'s items packed into an ``EncodedChunk``."""
    usable, skipped = _usable_and_skipped(items)
    if not usable:
        return None, skipped
    encoded = [e for _, e in usable]
    paired = isinstance(encoded[0], tuple)
    images = [e[0] for e in encoded] if paired else encoded
    pixels = torch.cat([image.reshape(-1) for image in images])
    labels = entries = None
    if paired:
        entries = [e[1][1] if isinstance(e[1], tuple) else e[1] for e in encoded]
        maps = [e[1][0] for e in encoded if isinstance(e[1], tuple)]
        labels = torch.stack(maps) if maps else None
    return EncodedChunk([i for i, _ in usable], pixels, [tuple(i.shape) for i in images], labels, entries), skipped


def unpack(chunk: EncodedChunk) -> tuple[list[int], list]:
    """``collate_encoded``'s inverse: the chunk's indices and its items as ``SceneDataset.encoded`` gave them."""
    sizes = [math.prod(shape) for shape in chunk.shapes]
    images = [part.view(shape) for part, shape in zip(chunk.pixels.split(sizes), chunk.shapes, strict=True)]
    if chunk.entries is None:
        return chunk.indices, images
    maps = iter(chunk.labels if chunk.labels is not None else ())
    entries = [(next(maps), e) if isinstance(e, tuple) else e for e in chunk.entries]
    return chunk.indices, list(zip(images, entries, strict=True))


def require_usable(dataset, n_items: int, skipped: list[SkippedItem]) -> None:
    """A pass over ``n_items`` items of which every one was skipped as a bad file is an error. Under
    torchrun the items and the skipped ones are counted over the processes (every process decides alike)."""
    bad = len({item.index for item in skipped})
    if distributed.joined():
        counts = distributed.all_gather_objects((n_items, bad))
        n_items, bad = sum(n for n, _ in counts), sum(b for _, b in counts)
    if n_items and bad == n_items:
        names = ", ".join(item.path for item in skipped[:3]) or "in another process"
        raise ValueError(
            f"no usable item among the {n_items} of {type(dataset).__name__}: every "
            f"file was bad (e.g. {names}); see the warnings above"
        )


def worker_context():
    """How data-loader workers start: forked from a fork server (a single-threaded process, with the library
    imported, started once per training process, so once per rank under torchrun), not from this process.
    This process runs other threads (gloo's under torchrun, tqdm's monitor, the feeder threads of a pass's
    queues); a worker forked while one of them holds a lock waits for that lock forever. That hung 1 of 12
    two-process runs with one worker each, in the worker's first instant. A worker then starts as fast as a
    fork (about 60 ms here), after 2-3 s once for the server. Without a fork server (Windows), spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["picie_lib.loader"])
    return context


def exit_with_the_training_process(worker_id: int) -> None:
    """A data-loader worker's first act: a thread that ends the worker when the process that started it
    ends, however it ends. torch's own check watches the worker's parent, which is the fork server, not
    the training process; and the fork server lives as long as any worker does. Without this, the
    workers of a killed run would wait for work forever."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # ready once the training process is gone
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-the-training-process", daemon=True).start()


def _require_importable(dataset, workers: int) -> None:
    """Workers started by the fork server import the data set's class by name; one defined in a notebook
    cell or typed into an interpreter has no module to import it from, and the worker would only die."""
    cls = type(dataset)
    if cls.__module__ == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
        raise ValueError(
            f"num_workers={workers}: the data set class {cls.__qualname__} is defined in a notebook or an "
            "interactive session, where data-loader workers cannot import it; define it in a module, or set "
            "num_workers to 0"
        )


def _concatenate(parts: list, pin: bool):
    """Chunks of a batch (tuples of tensors) joined along the batch dimension; into page-locked
    memory when a GPU will take them (the copy to it can then overlap the next batch)."""
    if len(parts) == 1 and not pin:
        return parts[0]
    joined = []
    for fields in zip(*parts, strict=True):
        shape = (sum(len(f) for f in fields), *fields[0].shape[1:])
        out = torch.empty(shape, dtype=fields[0].dtype, pin_memory=pin)
        joined.append(torch.cat(fields, out=out))
    return tuple(joined)


@functools.cache
def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The CUDA stream batches are made on, one per device for the process's life: the caching allocator keeps a
    freed block for the stream it was made on, so a stream of its own per pass would keep a cache per pass."""
    return torch.cuda.Stream(device)


class MadeAhead:
    """The batches of ``steps()`` made in a thread of their own: one waits for the pass while the next is made.

    A pass waits for the GPU at every step (the labels it copies back, the loss it checks). Made in the pass's
    thread, the next batch's decoding and cutting would only start then, and the GPU would sit idle while they
    run; here they run meanwhile, on a CUDA stream of their own (``side_stream``). The pass's stream waits for a
    batch's event before using it, and the batch's memory is not reused before the pass's stream is done with it
    (``record_stream``). On a CPU (the tests, ``benchmarks/views_check.py``) the same thread runs, without
    streams. An error in the thread is raised where the pass takes the batch; ``close`` stops the thread."""

    _DONE = object()

    def __init__(self, steps, device: torch.device) -> None:
        self.device = torch.device(device)
        self.stream = None
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self.stream = side_stream(self.device)
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._make, args=(steps,), name="batches-made-ahead", daemon=True)
        self.thread.start()

    def _make(self, steps) -> None:
        made = None
        try:
            made = steps()
            with ExitStack() as on_its_stream:
                if self.stream is not None:
                    on_its_stream.enter_context(torch.cuda.device(self.device))
                    on_its_stream.enter_context(torch.cuda.stream(self.stream))
                for batch in made:
                    ready = None if self.stream is None or batch is None else self.stream.record_event()
                    if not self._put((batch, ready)):
                        return
            self._put(self._DONE)
        except BaseException as err:  # raised again in the pass's thread
            self._put(err)
        finally:
            if made is not None:
                made.close()  # ends the data loader's iterator, and so its workers' work

    def _put(self, item) -> bool:
        """Queue ``item`` unless the pass has stopped taking batches; whether it was queued."""
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while (item := self.queue.get()) is not self._DONE:
            if isinstance(item, BaseException):
                raise item
            batch, ready = item
            if ready is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(ready)
                for tensor in batch:
                    if tensor.is_cuda:
                        tensor.record_stream(stream)
            yield batch

    def close(self, wait: bool = True) -> None:
        """Stop making batches and, with ``wait``, wait for the thread to end (it finishes the batch it is making
        first). Without: a second at most; an interrupted run does not wait for a worker stuck on a file (the
        thread is a daemon, and stops at its next batch)."""
        self.stopping.set()
        self.thread.join(None if wait else 1.0)


class Batches:
    """The batches of ``dataset`` in ``order``, without the items whose file is bad; after a full
    pass, ``skipped_files`` names those files. A pass in which no item is usable is an error.

    With workers, a batch is not one worker's job: it is cut into chunks of a few items that all
    workers make at once, from the first batch on, and joined here in order. So the batches, their
    order and their content are the same for any ``num_workers``.

    Under torchrun each process reads its share of every global step (``distributed.rank_batches``),
    or with ``split=False`` the whole pass (the linear probe, trained alike in every process).
    ``keep_empty``: a step with no usable item of this process's yields None rather than nothing, so
    that every process sees every step (the k-means sums each step over the processes).
    ``on_device``: the batches are made on ``cfg.device`` from what the workers read (``Encoded``: the files'
    bytes), by default where that device is a GPU; else the workers make the items.
    """

    def __init__(
        self,
        dataset,
        order: list[int],
        batch_size: int,
        cfg: Config,
        require_usable: bool = True,
        keep_empty: bool = False,
        split: bool = True,
        on_device: bool | None = None,
    ) -> None:
        self.dataset, self.require_usable, self.keep_empty = dataset, require_usable, keep_empty
        self.device = resolve_device(cfg.device)
        self.on_device = self.device.type == "cuda" if on_device is None else on_device
        if split:
            batches = distributed.rank_batches(order, batch_size)
        else:
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.order = [i for batch in batches for i in batch]  # this process's items
        workers = cfg.num_workers
        # two chunks per worker per batch: every worker busy, and a batch ready as soon as possible
        chunk = batch_size if workers == 0 else max(1, math.ceil(batch_size / (2 * workers)))
        self.chunks_per_batch, chunks = [], []
        for batch in batches:
            pieces = [batch[i : i + chunk] for i in range(0, len(batch), chunk)]
            self.chunks_per_batch.append(len(pieces))
            chunks += pieces
        extra = {}
        if workers and chunks:  # enough chunks in flight for about two batches
            _require_importable(dataset, workers)
            extra["prefetch_factor"] = max(2, math.ceil(2 * batch_size / (chunk * workers)))
            extra["multiprocessing_context"] = worker_context()
            extra["worker_init_fn"] = exit_with_the_training_process
        self.loader = DataLoader(
            Encoded(dataset) if self.on_device else dataset,
            batch_sampler=chunks,
            num_workers=workers if chunks else 0,
            collate_fn=collate_encoded if self.on_device else collate_usable,
            **extra,
        )
        self.pin = torch.cuda.is_available() and self.device.type == "cuda"
        self.skipped: list[SkippedItem] = []

    def __len__(self) -> int:
        return len(self.chunks_per_batch)

    def __iter__(self):
        self.skipped = skipped = []  # this pass's own list: a pass begun again does not share it
        steps = MadeAhead(lambda: self._steps(skipped), self.device) if self.on_device else self._steps(skipped)
        interrupted = False
        try:
            for batch in steps:
                if batch is not None:
                    yield batch
                elif self.keep_empty:
                    yield None
        except (KeyboardInterrupt, SystemExit):
            interrupted = True
            raise
        finally:
            if isinstance(steps, MadeAhead):
                steps.close(wait=not interrupted)
        if self.require_usable:
            require_usable(self.dataset, len(self.order), skipped)

    def _steps(self, skipped: list):
        """One batch per global step, None where no item of this process's is usable; the items left out as bad
        files are added to ``skipped``."""
        chunks = iter(self.loader) if self.order else iter(())
        for count in self.chunks_per_batch:
            parts = []
            for _ in range(count):
                part, left_out = next(chunks)
                skipped += left_out
                if part is not None:
                    parts.append(part)
            if not parts:
                yield None
            else:
                yield self._made(parts, skipped) if self.on_device else _concatenate(parts, self.pin)

    def _made(self, parts: list[EncodedChunk], skipped: list) -> tuple[torch.Tensor, ...] | None:
        """A batch made on the device from its chunks: ``(index, views)`` or
        ``(index, images, labels)``; None if every file of it turned out bad."""
        indices, encoded = [], []
        for chunk in parts:
            chunk_indices, chunk_encoded = unpack(chunk)
            indices += chunk_indices
            encoded += chunk_encoded
        make = self.dataset.train_views if self.dataset.mode == "train" else self.dataset.eval_pairs
        *batch, left_out = make(indices, encoded, self.device)
        skipped += left_out
        return tuple(batch) if len(batch[0]) else None

    @property
    def skipped_files(self) -> list[str]:
        return sorted({item.path for item in self.skipped})
