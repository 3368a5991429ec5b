// rtnetlink over NETLINK_ROUTE sockets: the per-sandbox link work of lib/network (veth pair
// with its peer created straight in the sandbox's netns, addresses, default route, ifb, tbf and
// the ingress redirect) without spawning ip/tc, which costs ~8 ms per process.
//
// Every call but deletion is synchronous on the JS thread: each is a handful of netlink round
// trips of a few microseconds. Deleting a link returns only after the kernel's rcu_barrier in
// netdev_run_todo (~16 ms here), so deletion runs on a worker thread and resolves a promise.
// Failures are data, { errno, step, detail? } (detail: the kernel's extended ack message).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/if_ether.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>
#include <linux/veth.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "addon.h"
#include "netlink.h"
#include "netlink_msg.h"

using namespace hutch_netlink;

namespace {

// Appends RTM_NEWLINK/SETLINK's IFLA_AF_SPEC { AF_INET6 { addr_gen_mode none } }: the links
// carry IPv4 only, so no IPv6 link-local address (and no DAD, no router solicitations).
void put_addrgenmode_none(nl_req &r) {
  rtattr *spec = nest_begin(r, IFLA_AF_SPEC);
  rtattr *inet6 = nest_begin(r, AF_INET6);
  uint8_t mode = IN6_ADDR_GEN_MODE_NONE;
  attr_put(r, IFLA_INET6_ADDR_GEN_MODE, &mode, 1);
  nest_end(r, inet6);
  nest_end(r, spec);
}

// Where it runs: a short-lived thread that exists only to enter the target netns, so the
// socket it opens belongs to that netns (a socket keeps the netns it was created in). The JS
// thread never calls setns: it would move libuv's and V8's threads' view of the network too.
struct ns_socket_req {
  int nsfd;
  int fd;
};

void *ns_socket_thread(void *p) {
  ns_socket_req *q = static_cast<ns_socket_req *>(p);
  if (setns(q->nsfd, CLONE_NEWNET) < 0) {
    q->fd = -errno;
    return nullptr;
  }
  q->fd = nl_open();
  return nullptr;
}

// netlinkSocket(pid): a NETLINK_ROUTE socket inside the netns of host pid `pid`, or a failure
// (step 'netns' when /proc/<pid>/ns/net cannot be opened or entered). The caller closes it.
Napi::Value NetlinkSocket(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int pid = info[0].As<Napi::Number>().Int32Value();
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
  int nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) return failure(env, "netns", errno, path);
  ns_socket_req q = {nsfd, -1};
  pthread_t t;
  int e = pthread_create(&t, nullptr, ns_socket_thread, &q);
  if (e != 0) {
    close(nsfd);
    return failure(env, "netns", e, "pthread_create");
  }
  pthread_join(t, nullptr);
  close(nsfd);
  if (q.fd < 0) return failure(env, "netns", -q.fd, path);
  return Napi::Number::New(env, q.fd);
}

// netlinkAddVeth(host, peer, pid, queues): a veth pair, `host` in the caller's netns and `peer` created
// directly in the netns of pid (IFLA_NET_NS_FD in the peer's attributes): no move between
// namespaces, which would cost an RCU grace period. Both ends are down. (IFLA_AF_SPEC is
// refused with EAFNOSUPPORT on a link being created: addrgenmode is set by netlinkConfigure.)
// `queues` (0: the kernel's default, one per CPU) sets both ends' tx and rx queue counts: each
// queue is a set of sysfs objects made on create and removed on delete.
Napi::Value NetlinkAddVeth(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string host = arg_string(info[0]), peer = arg_string(info[1]);
  int pid = info[2].As<Napi::Number>().Int32Value();
  uint32_t queues = info[3].As<Napi::Number>().Uint32Value();
  if (!name_ok(host) || !name_ok(peer)) return failure(env, "veth", EINVAL, "interface name");
  int fd = host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
  int nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) return failure(env, "netns", errno, path);

  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, host.c_str());
  if (queues > 0) {
    attr_u32(r, IFLA_NUM_TX_QUEUES, queues);
    attr_u32(r, IFLA_NUM_RX_QUEUES, queues);
  }
  rtattr *linkinfo = nest_begin(r, IFLA_LINKINFO);
  attr_str(r, IFLA_INFO_KIND, "veth");
  rtattr *data = nest_begin(r, IFLA_INFO_DATA);
  rtattr *peer_attr = nest_begin(r, VETH_INFO_PEER);
  ifinfomsg *pifi = static_cast<ifinfomsg *>(req_put(r, sizeof(ifinfomsg)));
  if (pifi) pifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, peer.c_str());
  attr_u32(r, IFLA_NET_NS_FD, (uint32_t)nsfd);
  if (queues > 0) {
    attr_u32(r, IFLA_NUM_TX_QUEUES, queues);
    attr_u32(r, IFLA_NUM_RX_QUEUES, queues);
  }
  nest_end(r, peer_attr);
  nest_end(r, data);
  nest_end(r, linkinfo);
  nl_result res = nl_talk(fd, r);
  close(nsfd);
  static const char *const steps[] = {"veth"};
  return result(env, res, steps);
}

// netlinkAddIfb(name): an ifb (down) in the caller's netns.
Napi::Value NetlinkAddIfb(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string name = arg_string(info[0]);
  if (!name_ok(name)) return failure(env, "ifb", EINVAL, "interface name");
  int fd = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : host_fd();  // a socket of another netns
  if (fd < 0) return failure(env, "socket", -fd, "");
  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, name.c_str());
  rtattr *linkinfo = nest_begin(r, IFLA_LINKINFO);
  attr_str(r, IFLA_INFO_KIND, "ifb");
  nest_end(r, linkinfo);
  static const char *const steps[] = {"ifb"};
  return result(env, nl_talk(fd, r), steps);
}

// netlinkConfigure(sock, name, address, prefix, gateway): on the link `name` of the socket's
// netns (sock -1: the caller's): addrgenmode none, the IPv4 address/prefix, up, and when
// gateway is not 0 a default route via it. Addresses are host-order 32-bit numbers.
// One batch after the index lookup; addrgenmode goes in its own message before the one that
// brings the link up, because do_setlink applies flags before IFLA_AF_SPEC.
Napi::Value NetlinkConfigure(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int sock = info[0].As<Napi::Number>().Int32Value();
  std::string name = arg_string(info[1]);
  uint32_t address = info[2].As<Napi::Number>().Uint32Value();
  uint32_t prefix = info[3].As<Napi::Number>().Uint32Value();
  uint32_t gateway = info[4].As<Napi::Number>().Uint32Value();
  if (!name_ok(name) || prefix > 32) return failure(env, "link", EINVAL, "interface name or prefix");
  int fd = sock >= 0 ? sock : host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  std::string detail;
  int index = ifindex_of(fd, name.c_str(), &detail);
  if (index < 0) return failure(env, "link", -index, detail.empty() ? name : detail);

  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  put_addrgenmode_none(r);

  ifaddrmsg *ifa = static_cast<ifaddrmsg *>(msg_begin(r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  ifa->ifa_prefixlen = (uint8_t)prefix;
  ifa->ifa_index = (uint32_t)index;
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  uint32_t a = htonl(address);
  attr_put(r, IFA_LOCAL, &a, 4);
  attr_put(r, IFA_ADDRESS, &a, 4);
  if (prefix < 31) {
    uint32_t brd = htonl(address | (prefix == 0 ? 0xffffffffu : (0xffffffffu >> prefix)));
    attr_put(r, IFA_BROADCAST, &brd, 4);
  }

  ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;

  if (gateway != 0) {
    rtmsg *rt = static_cast<rtmsg *>(msg_begin(r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, sizeof(rtmsg)));
    rt->rtm_family = AF_INET;
    rt->rtm_dst_len = 0;
    rt->rtm_table = RT_TABLE_MAIN;
    rt->rtm_protocol = RTPROT_BOOT;
    rt->rtm_scope = RT_SCOPE_UNIVERSE;
    rt->rtm_type = RTN_UNICAST;
    uint32_t gw = htonl(gateway);
    attr_put(r, RTA_GATEWAY, &gw, 4);
    attr_u32(r, RTA_OIF, (uint32_t)index);
  }
  static const char *const steps[] = {"link", "address", "link", "route"};
  return result(env, nl_talk(fd, r), steps);
}

// netlinkSetUp(name): addrgenmode none, then up, for a link of the caller's netns (an ifb has no address).
Napi::Value NetlinkSetUp(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string name = arg_string(info[0]);
  if (!name_ok(name)) return failure(env, "link", EINVAL, "interface name");
  int fd = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : host_fd();  // a socket of another netns
  if (fd < 0) return failure(env, "socket", -fd, "");
  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, name.c_str());
  put_addrgenmode_none(r);
  ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;
  attr_str(r, IFLA_IFNAME, name.c_str());
  static const char *const steps[] = {"link", "link"};
  return result(env, nl_talk(fd, r), steps);
}

// Deletion off the JS thread. RTM_DELLINK returns after netdev_run_todo's rcu_barrier (a grace
// period, ~16 ms here), so it runs on a libuv worker; lib/network queues deletions so that at
// most one worker is busy with them. Each worker opens its own socket (the JS thread's is not
// shared across threads).
class DeleteLinksWorker : public Napi::AsyncWorker {
 public:
  DeleteLinksWorker(Napi::Env env, std::vector<std::string> names)
      : Napi::AsyncWorker(env), names_(std::move(names)), errs_(names_.size(), 0), details_(names_.size()), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int fd = nl_open();
    for (size_t i = 0; i < names_.size(); i++) {
      if (fd < 0) {
        errs_[i] = fd;
        continue;
      }
      nl_req r;
      ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_DELLINK, 0, sizeof(ifinfomsg)));
      ifi->ifi_family = AF_UNSPEC;
      attr_str(r, IFLA_IFNAME, names_[i].c_str());
      nl_result res = nl_talk(fd, r);
      errs_[i] = res.err;
      details_[i] = res.detail;
    }
    if (fd >= 0) close(fd);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, names_.size());
    for (size_t i = 0; i < names_.size(); i++) {
      out.Set((uint32_t)i, errs_[i] == 0 ? Napi::Value(Napi::Boolean::New(env, true)) : failure(env, "delete", errs_[i], details_[i]));
    }
    deferred_.Resolve(out);
  }

 private:
  std::vector<std::string> names_;
  std::vector<int> errs_;
  std::vector<std::string> details_;
  Napi::Promise::Deferred deferred_;
};

// netlinkDeleteLinks(names): a promise of one result per name, true or { errno, step: 'delete' }
// (ENODEV: already gone, e.g. with its netns). Deleting a veth end deletes its peer too.
Napi::Value NetlinkDeleteLinks(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<std::string> names;
  for (uint32_t i = 0; i < a.Length(); i++) names.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  DeleteLinksWorker *w = new DeleteLinksWorker(env, std::move(names));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// netlinkDeleteLinksSync(names): the same as netlinkDeleteLinks, on the calling thread, for a
// process that is exiting ('exit' handlers cannot wait for a worker): one grace period a link.
Napi::Value NetlinkDeleteLinksSync(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array a = info[0].As<Napi::Array>();
  Napi::Array out = Napi::Array::New(env, a.Length());
  int fd = host_fd();
  for (uint32_t i = 0; i < a.Length(); i++) {
    std::string name = a.Get(i).As<Napi::String>().Utf8Value();
    if (fd < 0) {
      out.Set(i, failure(env, "socket", -fd, ""));
      continue;
    }
    nl_req r;
    ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_DELLINK, 0, sizeof(ifinfomsg)));
    ifi->ifi_family = AF_UNSPEC;
    attr_str(r, IFLA_IFNAME, name.c_str());
    nl_result res = nl_talk(fd, r);
    out.Set(i, res.err == 0 ? Napi::Value(Napi::Boolean::New(env, true)) : failure(env, "delete", res.err, res.detail));
  }
  return out;
}

}  // namespace

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("netlinkSocket", Napi::Function::New(env, NetlinkSocket));
  exports.Set("netlinkAddVeth", Napi::Function::New(env, NetlinkAddVeth));
  exports.Set("netlinkAddIfb", Napi::Function::New(env, NetlinkAddIfb));
  exports.Set("netlinkConfigure", Napi::Function::New(env, NetlinkConfigure));
  exports.Set("netlinkSetUp", Napi::Function::New(env, NetlinkSetUp));
  exports.Set("netlinkAddTbf", Napi::Function::New(env, NetlinkAddTbf));
  exports.Set("netlinkAddRedirect", Napi::Function::New(env, NetlinkAddRedirect));
  exports.Set("netlinkDeleteLinks", Napi::Function::New(env, NetlinkDeleteLinks));
  exports.Set("netlinkDeleteLinksSync", Napi::Function::New(env, NetlinkDeleteLinksSync));
  exports.Set("netfilterSetExists", Napi::Function::New(env, NetfilterSetExists));
}

