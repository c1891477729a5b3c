// @ts-check
// Imported by every test file: an unhandled rejection or uncaught exception anywhere in the test
// process fails the run, even if no assertion notices it.

let armed = false;

export function armTripwire() {
  if (armed) return;
  armed = true;
  process.on('unhandledRejection', (reason) => {
    console.error('TRIPWIRE: unhandled rejection:', reason);
    process.exitCode = 1;
    throw reason;
  });
}

armTripwire();
