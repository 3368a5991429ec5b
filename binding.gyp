{
  "targets": [
    {
      "target_name": "hutch",
      "sources": [
        "addon/addon.cc",
        "addon/clone.cc",
        "addon/blank.cc",
        "addon/trees.cc",
        "addon/initbin.cc",
        "addon/plan.cc",
        "addon/child.cc",
        "addon/child_mount.cc",
        "addon/child_lock.cc",
        "addon/child_net.cc",
        "addon/pidfd.cc",
        "addon/upperio.cc",
        "addon/fdpass.cc",
        "addon/rootio.cc",
        "addon/extract.cc",
        "addon/netlink.cc",
        "addon/netlink_msg.cc",
        "addon/netlink_tc.cc",
        "addon/netfilter.cc",
        "addon/nflog.cc",
        "addon/nfqueue.cc",
        "addon/relay.cc",
        "addon/imageview.cc",
        "addon/nsjoin.cc",
        "addon/linkns.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "hutch_template",
      "sources": ["addon/zygote/host.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "hutch_zygote_node",
      "sources": ["addon/zygote/node.c", "addon/zygote/node_platform.cc"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "cflags_c": ["-std=gnu11"]
    },
    {
      "target_name": "hutch-zygote-helper",
      "type": "none",
      "actions": [
        {
          "action_name": "build_zygote_helper",
          "inputs": ["addon/zygote/helper.c", "addon/zygote/serve.c", "addon/zygote/zygote_internal.h", "addon/zygote/mounts.c", "addon/zygote/mounts.h", "addon/zygote/mmap_hint.c", "addon/fdmsg.h", "addon/init/confine.h", "scripts/build-zygote.sh"],
          "outputs": ["<(PRODUCT_DIR)/libhutch-zygote.so"],
          "action": ["sh", "scripts/build-zygote.sh", "<(PRODUCT_DIR)/libhutch-zygote.so", "addon/zygote/helper.c", "addon/zygote/serve.c", "addon/zygote/mounts.c", "addon/zygote/mmap_hint.c"]
        }
      ]
    },
    {
      "target_name": "hutch-init",
      "type": "none",
      "actions": [
        {
          "action_name": "build_init",
          "inputs": ["addon/init/init.c", "addon/init/protocol.h", "addon/init/confine.h", "addon/init/listeners.h", "addon/init/exec_child.h", "scripts/build-init.sh"],
          "outputs": ["<(PRODUCT_DIR)/hutch-init"],
          "action": ["sh", "scripts/build-init.sh", "addon/init/init.c", "<(PRODUCT_DIR)/hutch-init"]
        }
      ]
    }
  ]
}
