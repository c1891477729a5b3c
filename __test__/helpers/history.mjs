// @ts-check
// The history checker of the fault scenarios: every critical section a worker ran is a record
// (see fixtures/history-worker.mjs). Mutual exclusion as a user relies on it: no two sections
// may overlap while both had writes accepted by the fenced store, counting a section from its
// grant (`start`) to its last accepted write's check (`lastWrite`: `lease.throwIfLost()` had just
// returned). All workers run on this machine, so their clock (`performance.timeOrigin +
// performance.now()`, epoch ms with a fraction: a release and the next grant are often in the
// same millisecond) is one clock.

/**
 * @typedef {object} Section
 * @property {number} id worker
 * @property {number} fence
 * @property {string} token
 * @property {number} start
 * @property {number | null} lastWrite check time of the last accepted write; null if none
 * @property {number} writes made while the library said "held"
 * @property {number} accepted of those, taken by the store
 * @property {boolean} late a write made after the library said the lease was gone
 * @property {boolean} lateAccepted whether the store took that one
 * @property {number | null} abortedAt when the lease's signal aborted, if it did
 * @property {number} end
 */

/**
 * @param {Section[]} sections
 * @returns {{ overlaps: string[], sections: number, writing: number, accepted: number, refused: number, lost: number, late: number, lateAccepted: number }}
 */
export function checkHistory(sections) {
  const writing = sections.filter((s) => s.lastWrite !== null).sort((a, b) => a.start - b.start);
  /** @type {string[]} */
  const overlaps = [];
  for (let i = 0; i < writing.length; i++) {
    const a = writing[i];
    for (let j = i + 1; j < writing.length && writing[j].start <= /** @type {number} */ (a.lastWrite); j++) {
      const b = writing[j];
      overlaps.push(
        `worker ${a.id} (fence ${a.fence}) held it ${a.start}..${a.lastWrite} and worker ${b.id} (fence ${b.fence}) from ${b.start}: both had writes accepted`,
      );
    }
  }
  return {
    overlaps,
    sections: sections.length,
    writing: writing.length,
    accepted: sections.reduce((n, s) => n + s.accepted, 0),
    refused: sections.reduce((n, s) => n + s.writes - s.accepted, 0),
    lost: sections.filter((s) => s.abortedAt !== null).length,
    late: sections.filter((s) => s.late).length,
    lateAccepted: sections.filter((s) => s.lateAccepted).length,
  };
}
