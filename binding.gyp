{
  "targets": [
    {
      "target_name": "hutch",
      "sources": [
        "addon/addon.cc",
        "addon/clone.cc",
        "addon/child.cc",
        "addon/child_mount.cc",
        "addon/child_net.cc",
        "addon/pidfd.cc",
        "addon/fdpass.cc",
        "addon/rootio.cc",
        "addon/netlink.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "hutch-init",
      "type": "executable",
      "sources": ["addon/init/init.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-ffunction-sections", "-fdata-sections"],
      "ldflags": ["-static", "-s", "-Wl,--gc-sections"]
    }
  ]
}
