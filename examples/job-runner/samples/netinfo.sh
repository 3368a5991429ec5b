# What network does the job have? Its interfaces and routes, as its own kernel sees them.
echo "interfaces:"
sed -n '3,$p' /proc/net/dev | cut -d: -f1 | tr -d ' ' | sed 's/^/  /'
echo "default route: $(awk '$2 == "00000000" { print "via " $1 }' /proc/net/route)"
