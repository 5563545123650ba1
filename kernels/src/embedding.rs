//! Embedding lookup and its deterministic scatter-add backward.

/// `out[i, :] = table[ids[i], :]` for rows of `dim` elements.
///
/// # Panics
/// If `dim == 0`, `table.len() % dim != 0`, `out.len() != ids.len() * dim` or
/// an id is not below the table's row count (callers validate ids first).
pub fn gather(table: &[f32], dim: usize, ids: &[u32], out: &mut [f32]) {
    assert!(dim > 0, "gather: dim == 0");
    assert_eq!(table.len() % dim, 0, "gather: table.len() % dim != 0");
    assert_eq!(out.len(), ids.len() * dim, "gather: out.len() != ids.len() * dim");
    let rows = table.len() / dim;
    for (o, &id) in out.chunks_exact_mut(dim).zip(ids) {
        let id = id as usize;
        assert!(id < rows, "gather: id {id} >= {rows} rows");
        o.copy_from_slice(&table[id * dim..(id + 1) * dim]);
    }
}

/// `dtable[ids[i], :] += dy[i, :]` for i = 0, 1, 2, … strictly in order: no
/// atomics, so a row that several positions use sums them in position order.
///
/// # Panics
/// As [`gather`], with `dtable` in the table's place and `dy` in `out`'s.
pub fn scatter_add(dy: &[f32], dim: usize, ids: &[u32], dtable: &mut [f32]) {
    assert!(dim > 0, "scatter_add: dim == 0");
    assert_eq!(dtable.len() % dim, 0, "scatter_add: dtable.len() % dim != 0");
    assert_eq!(dy.len(), ids.len() * dim, "scatter_add: dy.len() != ids.len() * dim");
    let rows = dtable.len() / dim;
    for (g, &id) in dy.chunks_exact(dim).zip(ids) {
        let id = id as usize;
        assert!(id < rows, "scatter_add: id {id} >= {rows} rows");
        for (d, &v) in dtable[id * dim..(id + 1) * dim].iter_mut().zip(g) {
            *d += v;
        }
    }
}
