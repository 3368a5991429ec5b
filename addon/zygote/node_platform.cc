/*
 * Worker threads for a fork of node (docs/templates.md, "The Node zygote").
 *
 * fork() keeps only the calling thread: a fork of the zygote has none of node's platform
 * worker threads nor its delayed-task scheduler thread. V8 still posts to them through the
 * process-wide v8::Platform (node's NodePlatform): CallOnWorkerThread, CallDelayedOnWorkerThread,
 * and every Job (libplatform's DefaultJob posts its workers through CallOnWorkerThread). In a
 * fork such a post signals a condition variable whose waiters were the zygote's threads (glibc
 * waits for them forever), and node's DrainTasks (a loop's end, a Worker's end) waits for tasks
 * that never run.
 *
 * So each fork gets worker threads of its own: right after fork(), the platform object's vptr is
 * pointed at a copy of node's vtable in which CallOnWorkerThread, CallDelayedOnWorkerThread and
 * DrainTasks are this file's, over a small pool made in the fork (threads started on the first
 * post: a task that posts nothing starts none). Node's own worker queue is never touched in a
 * fork (the zygote drains it before each fork). The layout is checked once, in the zygote,
 * before any fork: the node major version the
 * addon was built for, the vptr is the address point of node's exported vtable, the copied range
 * is that symbol's (mapped: it is the symbol), and each slot replaced holds node's exported
 * NodePlatform method of that name. Anything else: the zygote refuses to start.
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

#include <node.h>
#include <node_version.h>
#include <v8.h>

namespace {

using v8::Task;

/* node's exported symbols that the slots must hold (Itanium mangling). */
const char kVtable[] = "_ZTVN4node12NodePlatformE";
const char kCallOnWorker[] = "_ZN4node12NodePlatform18CallOnWorkerThreadESt10unique_ptrIN2v84TaskESt14default_deleteIS3_EE";
const char kCallDelayed[] = "_ZN4node12NodePlatform25CallDelayedOnWorkerThreadESt10unique_ptrIN2v84TaskESt14default_deleteIS3_EEd";
const char kDrainTasks[] = "_ZN4node12NodePlatform10DrainTasksEPN2v87IsolateE";

/* The vtable slot (index from the address point) of a virtual member function, from the
 * compiler: an Itanium pointer to a virtual member function holds 1 + its vtable offset. */
template <typename F>
long SlotOf(F f) {
  static_assert(sizeof(F) == 2 * sizeof(ptrdiff_t), "Itanium C++ ABI member pointer");
  ptrdiff_t w[2];
  memcpy(w, &f, sizeof w);
  if ((w[0] & 1) == 0 || w[1] != 0) return -1;  /* not virtual, or adjusted: not this ABI */
  return (long)((w[0] - 1) / (ptrdiff_t)sizeof(void *));
}

/* The fork's pool. Threads start on demand (up to `max_threads`), block every signal, and run
 * tasks in order; delayed tasks wait in `delayed` until due. Used only in a fork. */
struct Pool {
  std::mutex mu;
  std::condition_variable work;   /* a task queued, or the earliest delayed one changed */
  std::condition_variable idle;   /* nothing queued and nothing running */
  std::deque<std::unique_ptr<Task>> queue;
  std::multimap<double, std::unique_ptr<Task>> delayed;
  int threads = 0, waiting = 0, starting = 0, running = 0, max_threads = 4;
  uint64_t posted = 0;
};
Pool *pool;

double Now() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void *WorkerMain(void *) {
  std::unique_lock<std::mutex> lk(pool->mu);
  pool->starting--;
  for (;;) {
    double now = Now();
    while (!pool->delayed.empty() && pool->delayed.begin()->first <= now) {
      pool->queue.push_back(std::move(pool->delayed.begin()->second));
      pool->delayed.erase(pool->delayed.begin());
    }
    if (!pool->queue.empty()) {
      std::unique_ptr<Task> t = std::move(pool->queue.front());
      pool->queue.pop_front();
      pool->running++;
      lk.unlock();
      t->Run();
      t.reset();
      lk.lock();
      pool->running--;
      if (pool->queue.empty() && pool->running == 0) pool->idle.notify_all();
      continue;
    }
    pool->waiting++;
    if (pool->delayed.empty()) {
      pool->work.wait(lk);
    } else {
      double wait = pool->delayed.begin()->first - now;
      pool->work.wait_for(lk, std::chrono::duration<double>(wait));
    }
    pool->waiting--;
  }
  return nullptr;
}

/* With the lock held: a thread more if every one is busy and the pool may grow. A thread that
 * cannot be made leaves the task queued for the others (or the next post's try). */
void Grow() {
  if (pool->waiting + pool->starting > 0 || pool->threads >= pool->max_threads) return;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setstacksize(&a, 4 << 20);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);  /* signals are the task's main thread's */
  pthread_t t;
  if (pthread_create(&t, &a, WorkerMain, nullptr) == 0) {
    pool->threads++;
    pool->starting++;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&a);
}

/* The replacements, with the ABI of the member functions whose slots they take (`self` is
 * `this`; a std::unique_ptr argument is passed by invisible reference either way). */
void CallOnWorkerThread(void *, std::unique_ptr<Task> task) {
  std::lock_guard<std::mutex> lk(pool->mu);
  pool->queue.push_back(std::move(task));
  pool->posted++;
  Grow();
  pool->work.notify_one();
}

void CallDelayedOnWorkerThread(void *, std::unique_ptr<Task> task, double delay) {
  std::lock_guard<std::mutex> lk(pool->mu);
  pool->delayed.emplace(Now() + (delay > 0 ? delay : 0), std::move(task));
  if (pool->threads == 0) Grow();
  pool->work.notify_one();
}

/* Node's DrainTasks: its worker tasks done, then the isolate's foreground tasks, again until
 * neither has anything left (a foreground task may post worker tasks, and the reverse). Here:
 * the pool's tasks, then node's own FlushForegroundTasks, which never touches node's worker
 * queue (the zygote's, and its threads' lock, which this process must never take). */
void DrainTasks(void *self, v8::Isolate *isolate) {
  auto *platform = static_cast<node::MultiIsolatePlatform *>(self);
  for (;;) {
    uint64_t seen;
    {
      std::unique_lock<std::mutex> lk(pool->mu);
      pool->idle.wait(lk, [] { return pool->queue.empty() && pool->running == 0; });
      seen = pool->posted;
    }
    bool ran = platform->FlushForegroundTasks(isolate);
    std::lock_guard<std::mutex> lk(pool->mu);
    if (!ran && pool->posted == seen && pool->queue.empty() && pool->running == 0) return;
  }
}

node::MultiIsolatePlatform *platform;
v8::Isolate *zygote_isolate;
void **vtable_copy;  /* the address point of the copy */
char error[512];

const char *Fail(const char *fmt, const char *a = "", long b = 0) {
  snprintf(error, sizeof error, fmt, a, b);
  return error;
}

}  // namespace

extern "C" {

/* In the zygote, from a call out of JavaScript: finds node's platform, checks its layout and
 * makes the vtable copy for forks. NULL when ready, else why not. */
const char *hutch_np_prepare(int node_major) {
  if (node_major != NODE_MAJOR_VERSION) {
    snprintf(error, sizeof error, "this addon was built for node %d, this is node %d; run npm rebuild (in hutch's directory) with the node of the template's image", NODE_MAJOR_VERSION, node_major);
    return error;
  }
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  if (!isolate) return Fail("no current V8 isolate%s");
  v8::HandleScope scope(isolate);
  v8::Local<v8::Context> ctx = isolate->GetCurrentContext();
  node::Environment *env = ctx.IsEmpty() ? nullptr : node::GetCurrentEnvironment(ctx);
  node::MultiIsolatePlatform *p = env ? node::GetMultiIsolatePlatform(env) : nullptr;
  if (!p) return Fail("no node platform for the current context%s");

  void *vt = dlsym(RTLD_DEFAULT, kVtable);
  if (!vt) return Fail("node does not export %s (its platform's vtable)", kVtable);
  Dl_info info;
  const ElfW(Sym) *sym = nullptr;
  if (!dladdr1(vt, &info, (void **)&sym, RTLD_DL_SYMENT) || !sym || sym->st_size < 3 * sizeof(void *))
    return Fail("cannot find the size of %s", kVtable);
  size_t words = sym->st_size / sizeof(void *);
  void **vptr = *reinterpret_cast<void ***>(p);
  if (vptr != static_cast<void **>(vt) + 2)
    return Fail("node's platform is not a node::NodePlatform (its vptr is not %s + 16)", kVtable);

  struct {
    long slot;
    const char *sym;
    void *fn;
  } repl[] = {
      {SlotOf(&v8::Platform::CallOnWorkerThread), kCallOnWorker, (void *)&CallOnWorkerThread},
      {SlotOf(&v8::Platform::CallDelayedOnWorkerThread), kCallDelayed, (void *)&CallDelayedOnWorkerThread},
      {SlotOf(&node::MultiIsolatePlatform::DrainTasks), kDrainTasks, (void *)&DrainTasks},
  };
  for (auto &r : repl) {
    void *want = dlsym(RTLD_DEFAULT, r.sym);
    if (!want) return Fail("node does not export %s", r.sym);
    if (r.slot < 0 || (size_t)r.slot + 2 >= words) return Fail("slot %2$ld of %1$s is outside node's vtable", r.sym, r.slot);
    if (vptr[r.slot] != want) return Fail("slot %2$ld of node's platform vtable is not %1$s", r.sym, r.slot);
  }

  void **copy = static_cast<void **>(malloc(words * sizeof(void *)));
  if (!copy) return Fail("out of memory%s");
  memcpy(copy, vptr - 2, words * sizeof(void *));
  for (auto &r : repl) copy[2 + r.slot] = r.fn;
  int n = p->NumberOfWorkerThreads();
  pool = new Pool();
  pool->max_threads = n > 1 ? n : 1;
  vtable_copy = copy + 2;
  platform = p;
  zygote_isolate = isolate;
  return nullptr;
}

/* The node major version this addon was built for. */
int hutch_np_built_major(void) { return NODE_MAJOR_VERSION; }

/* In the zygote, before serving and before each fork: node's worker tasks done (none queued,
 * none running), so nothing is lost or half-done across a fork. Node's own DrainTasks (the
 * vtable is node's here). */
void hutch_np_quiesce(void) {
  if (platform) platform->DrainTasks(zygote_isolate);
}

/* In a fork, first thing: V8's worker-thread posts go to this fork's pool. */
void hutch_np_child(void) {
  if (platform) *reinterpret_cast<void ***>(platform) = vtable_copy;
}

}  // extern "C"
