// Reading a setup plan (addon/plan.h): its shape checked once in the parent before clone, then
// walked op by op by the child. plan_next runs in the child: no allocation, no errno.
#include "plan.h"

#include "steps.h"

// The string arguments each op type takes: exactly, or at least (`min`) with pairs after.
struct op_arity {
  uint16_t min;
  bool pairs;  // then key/value pairs (MOUNT after fstype, target; MASK after its path)
};
static op_arity arity_of(uint16_t type) {
  switch (type) {
    case OP_HOSTNAME:
    case OP_CHDIR_LAYERS:
    case OP_ROOT_MOUNTPOINT:
    case OP_UPPER_DIR:
    case OP_SETID:
    case OP_BIND:
    case OP_READONLY:
    case OP_READONLY_ROOT:
    case OP_PIVOT_ROOT:
    case OP_LOCK_MOUNTS:
      return {1, false};
    case OP_OVERLAY_FINISH:  // the legacy mount(2) data, or "" for lowerdir+
      return {1, false};
    case OP_OVERLAY_BEGIN:
      return {1, true};  // layer names, any count >= 1
    case OP_SCRATCH:
    case OP_DEV_NODE:
    case OP_SYMLINK:
      return {2, false};
    case OP_MOUNT:
      return {2, true};
    case OP_MASK:
      return {1, true};
  }
  return {0xffff, false};
}

const char *plan_check(const uint8_t *buf, size_t len, size_t nfds) {
  if (len < sizeof(plan_header)) return "plan: shorter than its header";
  const plan_header *h = (const plan_header *)buf;
  if (h->magic != HUTCH_PLAN_MAGIC) return "plan: bad magic";
  if (h->version != HUTCH_PLAN_VERSION) return "plan: version differs from the addon's (rebuild lib/ and addon together)";
  if (h->header_size != sizeof(plan_header)) return "plan: header size differs from the addon's";
  if (h->length != len) return "plan: length field differs from the buffer's length";
  if (len > HUTCH_PLAN_MAX) return "plan: larger than HUTCH_PLAN_MAX";
  if (h->fd_count != nfds || nfds > kMaxGoFds) return "plan: fd_count differs from the fds given (or exceeds 253)";
  if (h->fail_step < -1 || h->fail_step >= (int)STEP_COUNT) return "plan: fail_step out of range";
  if (h->fail_step >= 0 && h->fail_errno <= 0) return "plan: fail_errno must be positive with fail_step";
  if (h->reserved != 0) return "plan: reserved header field is not zero";
  const uint8_t *at = buf + sizeof(plan_header), *end = buf + len;
  for (uint32_t i = 0; i < h->op_count; i++) {
    if ((size_t)(end - at) < sizeof(plan_op)) return "plan: op past the end";
    const plan_op *op = (const plan_op *)at;
    if (op->size < sizeof(plan_op) || op->size % 8 != 0 || op->size > (size_t)(end - at)) return "plan: bad op size";
    if (op->type == 0 || op->type >= OP_MAX) return "plan: unknown op type";
    if (op->step >= STEP_COUNT) return "plan: op step out of range";
    if (op->reserved != 0) return "plan: reserved op field is not zero";
    op_arity a = arity_of(op->type);
    bool path_bind = op->type == OP_BIND && (op->flags & PLAN_F_PATH);
    if (!path_bind && (op->nstr < a.min || (!a.pairs && op->nstr != a.min))) return "plan: wrong string count for the op";
    if (a.pairs && (op->type == OP_MOUNT || op->type == OP_MASK) && (op->nstr - a.min) % 2 != 0)
      return "plan: option keys and values must pair";
    // Every string NUL-terminated inside the op.
    const char *s = (const char *)(at + sizeof(plan_op)), *op_end = (const char *)(at + op->size);
    for (unsigned k = 0; k < op->nstr; k++) {
      while (s < op_end && *s) s++;
      if (s >= op_end) return "plan: string not terminated inside its op";
      s++;
    }
    // fds: BIND takes one; OVERLAY_BEGIN one per layer name, from `fd` on; others none.
    size_t need = op->type == OP_BIND ? 1 : op->type == OP_OVERLAY_BEGIN ? op->nstr : 0;
    if (op->type == OP_BIND && op->fd < 0 && !(op->flags & PLAN_F_PATH)) return "plan: bind without a tree fd";
    if (op->type == OP_BIND && (op->flags & PLAN_F_PATH) && (op->fd != -1 || op->nstr != 2)) return "plan: a path bind takes a target and a source, no fd";
    if (op->fd >= 0 && (need == 0 || (size_t)op->fd + need > nfds)) return "plan: op fd index out of range";
    if (op->fd < -1) return "plan: op fd index out of range";
    at += op->size;
  }
  if (at != end) return "plan: bytes after the last op";
  return nullptr;
}

bool plan_next(plan_cursor &c, const plan_op **op, const char **s0) {
  if (c.at >= c.end) return false;
  *op = (const plan_op *)c.at;
  *s0 = (*op)->nstr > 0 ? (const char *)(c.at + sizeof(plan_op)) : "";
  c.at += (*op)->size;
  return true;
}
