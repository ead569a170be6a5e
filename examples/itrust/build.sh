#!/bin/sh
# Builds itrust.war into OUT_DIR, byte-reproducibly: the same sources, JDK and jars give the same
# sha256 (jar --date fixes every entry's time; jar sorts the entries).
#
#   examples/itrust/build.sh OUT_DIR [VERSION]
#
# VERSION (default: the VERSION file beside this script) is stamped into the WAR: /version and
# /health answer it. It must match [A-Za-z0-9][A-Za-z0-9._+-]{0,63}.
# Needs javac and jar (JDK 17 or later), Tomcat 10's servlet API and the MariaDB JDBC driver:
#   apt-get install default-jdk-headless libtomcat10-java libmariadb-java
# SERVLET_API and MARIADB_JDBC override the jars' paths; SOURCE_DATE_EPOCH the entries' time.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 OUT_DIR [VERSION]" >&2; exit 2; }
out=$1
if [ $# -eq 2 ]; then version=$2; else version=$(cat "$here/VERSION"); fi
case $version in
  ''|[!A-Za-z0-9]*|*[!A-Za-z0-9._+-]*)
    echo "build.sh: version '$version' is not a version: use letters, digits and . _ + - (starting with a letter or digit)" >&2
    exit 2 ;;
esac
[ ${#version} -le 64 ] || { echo "build.sh: version is longer than 64 characters" >&2; exit 2; }

servlet_api=${SERVLET_API:-/usr/share/java/tomcat10-servlet-api.jar}
jdbc=${MARIADB_JDBC:-/usr/share/java/mariadb-java-client.jar}
for tool in javac jar; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is not on PATH: apt-get install default-jdk-headless" >&2; exit 1; }
done
[ -r "$servlet_api" ] || { echo "build.sh: the servlet API $servlet_api is missing: apt-get install libtomcat10-java (or set SERVLET_API)" >&2; exit 1; }
[ -r "$jdbc" ] || { echo "build.sh: the JDBC driver $jdbc is missing: apt-get install libmariadb-java (or set MARIADB_JDBC)" >&2; exit 1; }

# 2026-01-01T00:00:00Z unless SOURCE_DATE_EPOCH says otherwise.
epoch=${SOURCE_DATE_EPOCH:-1767225600}
case $epoch in ''|*[!0-9]*) echo "build.sh: SOURCE_DATE_EPOCH must be a number of seconds" >&2; exit 2;; esac
date=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d "$out/.itrust-build.XXXXXX")
trap 'rm -rf "$stage" "$stage.war"' EXIT
trap 'exit 1' INT TERM

mkdir -p "$stage/WEB-INF/classes/itrust" "$stage/WEB-INF/lib" "$stage/META-INF"
cp "$here/web/WEB-INF/web.xml" "$stage/WEB-INF/web.xml"
cp "$here/web/META-INF/context.xml" "$stage/META-INF/context.xml"
javac -nowarn --release 17 -encoding UTF-8 -cp "$servlet_api" -d "$stage/WEB-INF/classes" "$here"/src/itrust/*.java
printf '%s\n' "$version" > "$stage/WEB-INF/classes/itrust/version.txt"
cp "$jdbc" "$stage/WEB-INF/lib/mariadb-java-client.jar"

# jar writes directory entries (Tomcat needs them to find WEB-INF/classes in an unpacked WAR)
# and, since the JDK releases that have --date, adds each directory's files in sorted order.
jar --create --file "$stage.war" --date="$date" -C "$stage" .
mv "$stage.war" "$out/itrust.war"
echo "$out/itrust.war (version $version)"
