# iTrust: a Java web application (a WAR on Tomcat 10) on the [itrust] hosts, one MariaDB on
# [db], nginx on [lb] in front, and a monitor here. See README.md.
#
#   pipeline deploy iTrust -i inventory.ini [-var war=PATH] [-auto-approve]

variable "war" {
  type        = string
  default     = ""
  description = "A WAR to run (your iTrust2 build); empty: build examples/itrust here"
}

variable "source" {
  type        = string
  default     = "../../examples/itrust"
  description = "The example's source, built with javac and jar when no war is given"
}

variable "db_password" {
  type        = string
  default     = ""
  sensitive   = true
  description = "The database user's password; empty: generated once and kept in state"
}

variable "port" {
  type        = number
  default     = 8080
  description = "Where each Tomcat listens on its host"
}

variable "listen" {
  type        = number
  default     = 80
  description = "Where nginx listens on the [lb] host"
}

variable "dashboard_port" {
  type        = number
  default     = 9190
  description = "The monitor's dashboard on this machine"
}

provider "ssh" {}

host "db" {
  provider = ssh
  group    = "db"
}

host "itrust" {
  provider = ssh
  group    = "itrust"
}

host "lb" {
  provider = ssh
  group    = "lb"
}

# Exactly one host in [db]: a block of several is a plan error naming them.
database "itrust" {
  provider = ssh
  on       = host.db
  engine   = "mariadb"
  name     = "itrust"
  user     = "itrust"
  password = var.db_password == "" ? null : var.db_password
  clients  = host.itrust
}

service "itrust" {
  provider = ssh
  on       = host.itrust
  # Built here once and shipped: the example (javac + jar), or your WAR as it is.
  source   = var.war == "" ? var.source : null
  build    = var.war == "" ? "sh build.sh ." : null
  artifact = var.war == "" ? null : var.war
  # Tomcat 10 from the distribution (tomcat10-common starts no service of its own) and a Java
  # runtime; one Tomcat per instance (tomcat-instance.sh), its CATALINA_BASE in the unit's
  # state directory.
  packages = ["tomcat10-common", "openjdk-17-jre-headless"]
  run      = var.war == "" ? "exec sh tomcat-instance.sh" : file("${var.source}/tomcat-instance.sh")
  port     = var.port
  env = {
    SPRING_DATASOURCE_URL      = database.itrust.url
    SPRING_DATASOURCE_USERNAME = database.itrust.user
  }
  secret_env = {
    SPRING_DATASOURCE_PASSWORD = database.itrust.password
  }
  # /health runs a query: an instance is healthy only when it reaches the database.
  health        = { path = "/health" }
  start_timeout = "120s"
  update        = { strategy = "rolling", max_unavailable = 1 }
}

# Exactly one host in [lb].
balancer "front" {
  on     = host.lb
  listen = var.listen
  routes = { "/" = service.itrust }
}

monitor "itrust" {
  listen   = var.dashboard_port
  interval = "100ms"
  watch    = ["itrust"]
}

output "url" {
  value = balancer.front.url
}

output "dashboard" {
  value = "http://127.0.0.1:${var.dashboard_port}/"
}
