// nf_tables over NETLINK_NETFILTER: the one lookup lib/network makes without spawning nft.
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
#include "netlink_msg.h"

namespace hutch_netlink {

// The JS thread's nf_tables socket, for the one lookup below.
int g_nft_fd = -1;

// netfilterSetExists(table, set): whether the set exists in the inet table (NFT_MSG_GETSET):
// true, false (ENOENT: no such table or set), or a failure. lib/network checks its table's
// marker set this way before each link instead of spawning nft (~8 ms), because a prune in
// another process may have removed the table since this process made it.
Napi::Value NetfilterSetExists(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string table = arg_string(info[0]), set = arg_string(info[1]);
  if (g_nft_fd < 0) g_nft_fd = nl_open(NETLINK_NETFILTER);
  if (g_nft_fd < 0) return failure(env, "nftables", -g_nft_fd, "");
  nl_req r;
  nfgen_begin(r, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSET, 0, NFPROTO_INET);
  attr_str(r, NFTA_SET_TABLE, table.c_str());
  attr_str(r, NFTA_SET_NAME, set.c_str());
  std::vector<char> reply;
  nl_result res = nl_talk(g_nft_fd, r, &reply);
  if (res.err == -ENOENT) return Napi::Boolean::New(env, false);
  if (res.err != 0) return failure(env, "nftables", res.err, res.detail);
  return Napi::Boolean::New(env, true);
}

}  // namespace hutch_netlink
