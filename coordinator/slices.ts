// How a streamed database's tables become data slices (pure): big tables are split into parts by heap pages, small
// ones batched, so that -j slices keep busy whatever the shape of the database — also one whose weight is one table.

/** The first major whose tables can be read in parts (ctid ranges that scan only their pages: TID range scans). */
export const SPLIT_FROM_VERSION = 140000;

/** A table the slices carry, as the holder's snapshot shows it on the source. */
export interface StreamTable {
  schema: string;
  name: string;
  /** The columns COPY carries: not generated, not dropped, in the source's order. */
  columns: string[];
  /** Every column verification hashes (generated ones too), in the source's order. */
  hashColumns: string[];
  /** Whether every copied column's type has binary I/O on both sides (binary COPY), else text. */
  binary: boolean;
  /** Heap (main fork) and TOAST bytes. */
  heapBytes: number;
  toastBytes: number;
  /** Heap pages: what a split table's parts divide. */
  pages: number;
}

export interface PlannedSlice {
  id: string;
  /** One table (whole, or one part of it) or a batch of small whole tables. */
  tables: StreamTable[];
  part?: { n: number; of: number; from: number; to: number | null };
  bytes: number;
}

export interface SlicePlanOptions {
  /** Slices in flight for this database (-j). */
  jobs: number;
  /** The source reads a page range with a TID range scan (PostgreSQL 14 and later): splitting is worth it. */
  canSplit: boolean;
}

export const MIN_SLICE_BYTES = 8 * 1024 * 1024;
export const MAX_SLICE_BYTES = 256 * 1024 * 1024;
/** A table is read in at most this many parts. */
export const MAX_PARTS = 32;
/** A batch of small tables holds at most this many (one target transaction). */
export const MAX_BATCH_TABLES = 200;

const size = (t: StreamTable) => t.heapBytes + t.toastBytes;

/**
 * The slice size: a quarter of the database's share per slice slot, within [8 MB, 256 MB] — so a database of one
 * 400 MB table and -j 2 is read in 8 parts of about 50 MB, and a tiny database is one batch.
 */
export function sliceBytes(totalBytes: number, jobs: number): number {
  return Math.min(MAX_SLICE_BYTES, Math.max(MIN_SLICE_BYTES, Math.ceil(totalBytes / (jobs * 4))));
}

/** Largest first: the biggest pieces start earliest, so the database's last slice ends soonest. */
export function planSlices(tables: StreamTable[], opts: SlicePlanOptions): PlannedSlice[] {
  const target = sliceBytes(
    tables.reduce((n, t) => n + size(t), 0),
    opts.jobs,
  );
  const slices: PlannedSlice[] = [];
  const small: StreamTable[] = [];
  for (const t of [...tables].sort((a, b) => size(b) - size(a))) {
    const parts = opts.canSplit && t.pages >= 2 ? Math.min(MAX_PARTS, t.pages, Math.ceil(size(t) / target)) : 1;
    if (parts > 1) {
      for (let i = 0; i < parts; i++) {
        const from = Math.floor((i * t.pages) / parts);
        // The last part reads to the end: pages the table grew by after the plan are still read (in the snapshot).
        const to = i === parts - 1 ? null : Math.floor(((i + 1) * t.pages) / parts);
        slices.push({
          id: `s${slices.length + 1}`,
          tables: [t],
          part: { n: i + 1, of: parts, from, to },
          bytes: Math.round((size(t) * ((to ?? t.pages) - from)) / t.pages),
        });
      }
    } else if (size(t) >= target) {
      slices.push({ id: `s${slices.length + 1}`, tables: [t], bytes: size(t) });
    } else small.push(t);
  }
  // Small tables, largest first, in batches of about one slice's size.
  let batch: StreamTable[] = [];
  let bytes = 0;
  const flush = () => {
    if (!batch.length) return;
    slices.push({ id: `s${slices.length + 1}`, tables: batch, bytes });
    batch = [];
    bytes = 0;
  };
  for (const t of small) {
    if (batch.length && (bytes + size(t) > target || batch.length >= MAX_BATCH_TABLES)) flush();
    batch.push(t);
    bytes += size(t);
  }
  flush();
  return slices.sort((a, b) => b.bytes - a.bytes);
}
