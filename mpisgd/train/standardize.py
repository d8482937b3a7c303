"""``data.standardize``: the training rows' per-feature mean and spread over every rank,
applied to every row the run reads; without it, a warning when the features' spreads
differ by orders of magnitude.

The moments (count, mean, squared deviations, min, max: ``mpisgd.data.scale.Moments``)
are computed by each rank over its own training rows in one pass (from memory, or one
streamed pass over its block under storage and server placement), merged in rank order
by one ``Reduce`` with a non-commutative merge operation, and broadcast from rank 0: every
rank holds the same Scaler bit for bit, and runs at different world sizes differ only
by floating-point rounding (the merge groups rows differently). Parameter servers hold
no rows and contribute empty moments, so they hold the same Scaler too.

Where the scaled rows come from: rows in memory (partition placement, held-out rows, a
``data.test`` block) are transformed in place here, once; storage placement transforms
each chunk as it is read (``modes.batches``), server placement on the servers once when
they load their chunks (``modes.dataserve``); the training objective's streamed pass
does the same (``evaluation``). k-fold runs call this per fold, so each fold's Scaler
comes from its own training rows; a resumed run recomputes it from the same rows.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd.comm import agreed_call
from mpisgd.context import Context
from mpisgd.data import check_values, read_rows
from mpisgd.data.read import iter_blocks
from mpisgd.data.scale import Moments, Scaler, block_rows, moments_of, spread_ratio
from mpisgd.errors import DataError
from mpisgd.runtime.log import warn

# Spreads (standard deviations) that differ by more than this factor get a warning. The
# loss's curvature along a feature grows with the square of its spread, so a ratio r
# makes the problem about r**2 ill-conditioned: at 1e3 (1e6) no single learning rate
# both keeps the widest feature stable and moves the narrowest one within a run.
WARN_RATIO = 1e3
# The warning needs orders of magnitude, not exact moments: a sample per rank will do.
WARN_ROWS = 65536


def standardize(ctx: Context) -> None:
    """Collective over the world (servers too): with ``data.standardize`` set
    ``ctx.scaler`` and standardise the rows in memory; else warn about features whose
    spreads differ by orders of magnitude."""
    if ctx.cfg.data.standardize:
        ctx.scaler = training_scaler(ctx)
        _transform_in_memory(ctx, ctx.scaler)
    else:
        _warn_if_badly_scaled(ctx)


def reduce_moments(comm: MPI.Intracomm, local: Moments) -> Moments:
    """Collective over ``comm``: every rank's moments merged, the same on every rank.

    One record of 4 d + 1 doubles per rank, passed as ONE element of a contiguous type
    so that MPI never applies the merge to a piece of a record."""
    buf = local.pack()
    out = np.empty_like(buf)
    record = MPI.DOUBLE.Create_contiguous(buf.size).Commit()
    op = MPI.Op.Create(_merge_records, commute=False)
    try:
        comm.Reduce([buf, 1, record], [out, 1, record], op=op, root=0)
    finally:
        op.Free()
        record.Free()
    comm.Bcast(out, root=0)   # the root's bytes: identical everywhere
    return Moments.unpack(out)


def _merge_records(inbuf, inoutbuf, datatype) -> None:
    """The MPI operation: inoutbuf = merge(inbuf, inoutbuf), in rank order."""
    into = np.frombuffer(inoutbuf, dtype=np.float64)
    merged = Moments.unpack(np.frombuffer(inbuf, dtype=np.float64)).merge(
        Moments.unpack(into))
    into[:] = merged.pack()


def training_scaler(ctx: Context) -> Scaler:
    """Collective over the world: the Scaler of every rank's training rows."""
    world = ctx.topo.world
    moments = reduce_moments(world, agreed_call(world, _training_moments, ctx))
    bad = moments.bad_features()
    if bad.size:   # the same reduced moments on every rank: the same verdict
        shown = ", ".join(str(int(j)) for j in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DataError(f"cannot standardise the training rows of '{ctx.info.path}': "
                        f"feature(s) {shown} (0-based) hold NaN or Inf values or overflow; "
                        f"set data.check_values = true to find the rows, or clean the data",
                        agreed=True)
    return moments.scaler()


def _training_moments(ctx: Context) -> Moments:
    """This rank's training rows' moments; local. Storage and server placement stream
    the rank's block once (bounded memory), checking values as they are read."""
    if ctx.X is not None:
        return moments_of(ctx.X, ctx.train_rows)
    out = Moments.empty(ctx.n_features)
    rows = ctx.train_rows
    if rows.size == 0:
        return out
    info, lo = ctx.info, ctx.row0
    for first, X, y in iter_blocks(info, lo, lo + int(rows[-1]) + 1,
                                   block_rows(ctx.n_features)):
        a = first - lo
        pick = rows[np.searchsorted(rows, a):np.searchsorted(rows, a + X.shape[0])] - a
        if ctx.cfg.data.check_values:
            check_values(X, y, info, f"rows [{first}, {first + X.shape[0]}) of "
                         f"'{info.path}'", first_row=first)
        out = out.merge(Moments.of(X[pick]))
    return out


def _transform_in_memory(ctx: Context, scaler: Scaler) -> None:
    """Standardise the rows this rank holds, in place, each array once (without
    ``data.test``, partition placement's held-out rows are rows of ``X``)."""
    if ctx.X is not None:
        scaler.transform(ctx.X, out=ctx.X)
    if ctx.test_X is not ctx.X and ctx.test_X.shape[0]:
        scaler.transform(ctx.test_X, out=ctx.test_X)


def _warn_if_badly_scaled(ctx: Context) -> None:
    """Collective over the world: rank 0 warns once when the features' spreads (over a
    sample of every rank's rows) differ by more than WARN_RATIO."""
    world = ctx.topo.world
    moments = reduce_moments(world, agreed_call(world, _sample_moments, ctx))
    ratio, wide, narrow = spread_ratio(moments)
    if ratio > WARN_RATIO:
        std = moments.std()
        warn(f"the features' spreads differ by a factor of {ratio:.3g} (standard deviation "
             f"of feature {wide}: {std[wide]:.3g}, of feature {narrow}: {std[narrow]:.3g}; "
             f"0-based): one learning rate cannot suit both, so SGD may diverge or crawl. "
             f"Set data.standardize = true to train on standardised features (mean 0, "
             f"std 1, computed from the training rows and stored with the model).")


def _sample_moments(ctx: Context) -> Moments:
    """Moments of a sample of this rank's rows, without a pass over storage: up to
    WARN_ROWS training rows in memory; under storage placement the held-out rows
    already read, else the first chunk of the rank's training rows; local."""
    if ctx.X is not None:
        return moments_of(ctx.X, ctx.train_rows[:WARN_ROWS])
    if ctx.test_rows.size:
        return moments_of(ctx.test_X, ctx.test_rows[:WARN_ROWS])
    rows = ctx.train_rows[:ctx.cfg.data.chunk_rows]
    if rows.size == 0:
        return Moments.empty(ctx.n_features)
    X, _ = read_rows(ctx.info, ctx.row0 + int(rows[0]), ctx.row0 + int(rows[-1]) + 1)
    return moments_of(X, rows - rows[0])
