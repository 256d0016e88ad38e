// Retrying a call to the broker while it is away (a restart, a lost cluster node): one loop for the coordinator
// and the workers, each saying how long it may keep trying and when to give up early.

export interface RetryOptions {
  /** Give up once this much time has passed since the first try. */
  forMs: number;
  /** Pause before try n+1 (n counts from 1). */
  pauseMs: (attempt: number) => number;
  /** Give up at once when this says so (a shutdown). */
  stop?: () => boolean;
  /** Told about each failure that will be retried. */
  onRetry?: (attempt: number, err: unknown) => void;
}

export async function retry<T>(fn: () => Promise<T>, opts: RetryOptions): Promise<T> {
  const deadline = Date.now() + opts.forMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (opts.stop?.() || Date.now() > deadline) throw err;
      opts.onRetry?.(attempt, err);
      await new Promise((r) => setTimeout(r, opts.pauseMs(attempt)));
    }
  }
}
