// @ts-check
// Small statistics helpers: nearest-rank percentiles over all samples, medians across repeats.

/**
 * Nearest-rank percentile of the samples (not interpolated): the smallest sample with at
 * least p of all samples at or below it.
 * @param {ArrayLike<number>} samples
 * @param {number} p in [0, 1]
 * @returns {number}
 */
export function percentile(samples, p) {
  const n = samples.length;
  if (n === 0) return NaN;
  const sorted = Float64Array.from(samples).sort();
  const rank = Math.min(n, Math.max(1, Math.ceil(p * n)));
  return sorted[rank - 1];
}

/**
 * Median of the finite values; NaN if there is none.
 * @param {Array<number | null | undefined>} values
 * @returns {number}
 */
export function median(values) {
  const finite = values.filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (finite.length === 0) return NaN;
  const sorted = /** @type {number[]} */ (finite).sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** @param {ArrayLike<number>} samples */
export function mean(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i];
  return samples.length ? sum / samples.length : NaN;
}

/** Nanoseconds between two `process.hrtime.bigint()` readings, as a Number. @param {bigint} from @param {bigint} to */
export function ns(from, to) {
  return Number(to - from);
}
