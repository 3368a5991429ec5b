// A job that never ends on its own: the time budget ends it.
let n = 0;
console.log('spinning');
for (;;) n++;
