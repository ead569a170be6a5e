#!/bin/sh
# Runs ONE Tomcat 10 in the foreground for one instance: the `run` of a pipeline service, which
# starts it under `sh -c` in the release directory with PORT set, as an unprivileged user.
#
#   tomcat-instance.sh [WAR]        (WAR: default the one *.war in the working directory)
#
# Each start makes a fresh CATALINA_BASE for the instance (conf/server.xml with the HTTP
# connector on $PORT and the shutdown port off, the WAR deployed as ROOT, never unpacked) and
# runs Debian's catalina.sh run from CATALINA_HOME (/usr/share/tomcat10: apt-get install
# tomcat10-common, which starts no service) in the foreground: the JVM is this script's only
# child, SIGTERM reaches it, and a stop exits 0.
#
# Environment:
#   PORT                 the HTTP port (required)
#   TOMCAT_ADDRESS       the address the connector binds (default: every address)
#   TOMCAT_INSTANCE_DIR  where CATALINA_BASE goes (default: $STATE_DIRECTORY when systemd gives
#                        one, else /var/tmp/tomcat-instance-<uid>/<instance>); must be ours
#   CATALINA_OPTS        JVM options (default: -Xmx256m -XX:+UseSerialGC)
#   CATALINA_HOME        default /usr/share/tomcat10
#   SPRING_DATASOURCE_URL/_USERNAME/_PASSWORD pass through to the application (never printed).
set -eu

die() { echo "tomcat-instance: $*" >&2; exit 2; }

war=${1:-}
if [ -z "$war" ]; then
  # The release's one WAR: itrust.war when built from this directory, or a WAR shipped as is.
  set -- ./*.war
  [ -f "$1" ] || set --
  [ $# -eq 1 ] || die "give the WAR as the first argument: the working directory $(pwd) holds $# WAR files"
  war=$1
  set --
fi
case $war in /*) ;; *) war=$(pwd)/$war ;; esac
[ -f "$war" ] && [ -r "$war" ] || die "the WAR $war does not exist or is not readable (give its path as the first argument)"

port=${PORT:-}
case $port in ''|*[!0-9]*) die "PORT must be set to a port number (got '${PORT:-}')" ;; esac
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "PORT $port is not in 1..65535"

address=${TOMCAT_ADDRESS:-}
case $address in *[!0-9A-Fa-f.:]*) die "TOMCAT_ADDRESS '$address' is not an IP address" ;; esac

home=${CATALINA_HOME:-/usr/share/tomcat10}
[ -x "$home/bin/catalina.sh" ] || die "$home/bin/catalina.sh is missing: apt-get install tomcat10-common (or set CATALINA_HOME)"

# The instance's name: the pipeline instance, else the port. A token, as it names a directory.
name=${PIPELINE_INSTANCE:-port-$port}
case $name in ''|.*|*[!A-Za-z0-9._-]*) die "PIPELINE_INSTANCE '$name' is not a token [A-Za-z0-9._-]" ;; esac

if [ -n "${TOMCAT_INSTANCE_DIR:-}" ]; then
  base=$TOMCAT_INSTANCE_DIR
elif [ -n "${STATE_DIRECTORY:-}" ]; then
  base=${STATE_DIRECTORY%%:*}/tomcat
else
  # /var/tmp, not /tmp: it survives reboots' cleaning less often, and the unit has no
  # writable directory of its own. The parent is made 0700 and must be ours, so another
  # user cannot plant a directory or a link here.
  parent=/var/tmp/tomcat-instance-$(id -u)
  mkdir -p -m 0700 "$parent" 2>/dev/null || true
  [ -d "$parent" ] && [ ! -L "$parent" ] && [ -O "$parent" ] || die "$parent is not a directory of ours: remove it or set TOMCAT_INSTANCE_DIR"
  chmod 0700 "$parent"
  base=$parent/$name
fi
case $base in /*) ;; *) die "the instance directory '$base' must be an absolute path" ;; esac
if [ -e "$base" ] || [ -L "$base" ]; then
  [ -d "$base" ] && [ ! -L "$base" ] && [ -O "$base" ] || die "$base exists and is not a directory of ours"
  rm -rf "$base"
fi
mkdir -p -m 0700 "$base"
mkdir "$base/conf" "$base/logs" "$base/temp" "$base/work" "$base/webapps"

addr_attr=
[ -n "$address" ] && addr_attr=" address=\"$address\""
cat > "$base/conf/server.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by tomcat-instance.sh at every start. -->
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="$port"$addr_attr protocol="HTTP/1.1" connectionTimeout="20000" maxThreads="50" />
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false" deployOnStartup="true" />
    </Engine>
  </Service>
</Server>
XML
cat > "$base/conf/web.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0" />
XML
cp "$war" "$base/webapps/ROOT.war"

export CATALINA_HOME="$home" CATALINA_BASE="$base" CATALINA_TMPDIR="$base/temp"
export CATALINA_OPTS="${CATALINA_OPTS:--Xmx256m -XX:+UseSerialGC}"
echo "tomcat-instance: $name on port $port, CATALINA_BASE $base, WAR $war" >&2

# catalina.sh run execs the JVM, which exits 143 on SIGTERM: systemd would call every stop a
# failure (Result=exit-code). So this shell stays, passes SIGTERM/SIGINT on to the JVM, and
# reports a stop it asked for as success; any other exit status is passed through.
"$home/bin/catalina.sh" run &
jvm=$!
stopping=0
trap 'stopping=1; kill -TERM "$jvm" 2>/dev/null' TERM INT
while :; do
  rc=0
  wait "$jvm" || rc=$?
  # A trapped signal ends `wait` early: wait again until the JVM itself has exited.
  kill -0 "$jvm" 2>/dev/null || break
done
if [ "$stopping" = 1 ] && [ "$rc" -eq 143 ]; then exit 0; fi
exit "$rc"
