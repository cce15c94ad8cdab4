"""How the training records are split between workers: strided copies, or parts of an indexed file read in place
when its classes are mixed through it. Pure functions of record positions and labels."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from launcher.data.recfile import RecordSpan


def strided_shards(num_records: int, num_shards: int) -> list[range]:
    """Record positions of each shard: shard i takes records i, i+n, i+2n, ...

    Striding rather than cutting contiguous blocks gives every worker the same mix
    of classes even when the file is sorted by class; sizes differ by at most one.

    >>> strided_shards(5, 2)
    [range(0, 5, 2), range(1, 5, 2)]
    """
    if num_shards < 1:
        raise ValueError("num_shards must be >= 1")
    return [range(i, num_records, num_shards) for i in range(num_shards)]


def index_parts(spans: Sequence[RecordSpan], parts: int) -> list[range | tuple[int, ...]]:
    """Which records (positions in ``spans``) ImageRecordIter reads as part k of ``parts`` with the ``.idx``.

    MXNet's indexed reader (dmlc-core's ``IndexedRecordIOSplitter``) sorts the records by
    offset and gives part k the ``ceil(N / parts)`` records from ``k * ceil(N / parts)`` on;
    a range when the index is in file order, as im2rec and mxft-prepare write it.

    >>> index_parts([RecordSpan(k, 100 * k, 100) for k in range(5)], 2)
    [range(0, 3), range(3, 5)]
    """
    order = sorted(range(len(spans)), key=lambda i: spans[i].offset)
    step = -(-len(spans) // parts)
    in_file_order = order == list(range(len(spans)))
    return [range(k * step, min((k + 1) * step, len(spans))) if in_file_order
            else tuple(order[k * step:(k + 1) * step]) for k in range(parts)]


def mixed_classes(labels: Sequence[float], parts: Sequence[Sequence[int]]) -> bool:
    """Whether every part holds every class that has at least one record per part (a shuffled file does; one
    sorted by class does not, and workers reading its contiguous parts would each see a few classes).

    >>> mixed_classes([0, 1, 0, 1], [range(0, 2), range(2, 4)]), mixed_classes([0, 0, 1, 1], [range(0, 2), range(2, 4)])
    (True, False)
    """
    counts = Counter(int(label) for label in labels)
    common = {label for label, count in counts.items() if count >= len(parts)}
    return all(common <= {int(labels[i]) for i in part} for part in parts)

