# checkbox.io: a Node.js application (Express) on the [checkbox] hosts, nginx on each of them
# serving the static site and proxying /api/ to every app instance, one MongoDB on [mongo],
# the feature flags' primary there with a mirror on every app host, and a monitor here.
# See README.md.
#
#   pipeline deploy checkbox.io -i inventory.ini [-var source=PATH] [-auto-approve]

variable "source" {
  type        = string
  default     = "../../examples/checkbox.io"
  description = "A checkout of checkbox.io (public_html/, server-side/site/)"
}

variable "revision" {
  type        = string
  default     = ""
  description = "A git revision of source to build (empty: the working tree as it is)"
}

variable "mongodb" {
  type        = bool
  default     = true
  description = "Install MongoDB on [mongo] (false: none; /api routes that need it answer 503)"
}

variable "mongo_password" {
  type        = string
  default     = ""
  sensitive   = true
  description = "The MongoDB user's password; empty: generated once and kept in state"
}

variable "mail_user" {
  type    = string
  default = ""
}

variable "mail_smtp" {
  type    = string
  default = ""
}

variable "mail_password" {
  type      = string
  default   = ""
  sensitive = true
}

variable "port" {
  type        = number
  default     = 3002
  description = "Where the first app instance listens on each [checkbox] host"
}

variable "replicas" {
  type        = number
  default     = 1
  description = "App instances per [checkbox] host (ports port, port+1, ...)"
}

variable "listen" {
  type        = number
  default     = 80
  description = "Where nginx listens on each [checkbox] host"
}

variable "strategy" {
  type        = string
  default     = "canary"
  description = "How a new version rolls out: canary (judged, stopped on failure or alert) or rolling"
}

variable "canary_interval" {
  type        = string
  default     = "30s"
  description = "How long each canary step (20 %, 50 %) is watched before the next"
}

variable "alert_error_ratio" {
  type        = number
  default     = 0.05
  description = "Alert when an instance's share of 5xx answers over 10 s is above this"
}

variable "alert_latency_p95" {
  type        = number
  default     = 1
  description = "Alert when an instance's 95th percentile latency over 10 s is above this (seconds)"
}

variable "alert_cpu" {
  type        = number
  default     = 0.9
  description = "Alert when the app's processes use more cores than this, over 30 s"
}

variable "alert_memory" {
  type        = number
  default     = 1073741824
  description = "Alert when the app's processes hold more memory than this (bytes), over 30 s"
}

variable "dashboard_port" {
  type        = number
  default     = 9191
  description = "The monitor's dashboard on this machine"
}

provider "ssh" {}

host "checkbox" {
  provider = ssh
  group    = "checkbox"
}

host "mongo" {
  provider = ssh
  group    = "mongo"
}

# Exactly one host in [mongo]: a block of several is a plan error naming them.
database "site" {
  count    = var.mongodb ? 1 : 0
  provider = ssh
  on       = host.mongo
  engine   = "mongodb"
  name     = "site"
  user     = "site"
  password = var.mongo_password == "" ? null : var.mongo_password
  clients  = host.checkbox
}

# The primary on the [mongo] host; each app host reads its own mirror (local_url).
flags "features" {
  provider   = redis
  on         = host.mongo
  mirrors_on = host.checkbox
  values     = { new-banner = false }
}

service "checkbox" {
  provider = ssh
  on       = host.checkbox
  replicas = var.replicas
  # Built here once (npm ci) and shipped: the whole checkout, node_modules included.
  source   = var.source
  revision = var.revision == "" ? null : var.revision
  build    = "cd server-side/site && npm ci --omit=dev"
  packages = ["nodejs"]
  run      = "cd server-side/site && APP_PORT=$PORT exec node server.js"
  port     = var.port
  env = {
    MONGO_IP   = try(database.site[0].address, "")
    MONGO_PORT = try(tostring(database.site[0].port), "")
    MONGO_USER = try(database.site[0].user, "")
    MAIL_USER  = var.mail_user
    MAIL_SMTP  = var.mail_smtp
  }
  secret_env = {
    MONGO_PASSWORD = try(database.site[0].password, "")
    MAIL_PASSWORD  = var.mail_password
    FLAGS_URL      = flags.features.local_url
  }
  health        = { path = "/api/health" }
  start_timeout = "60s"
  update = var.strategy == "canary" ? {
    strategy = "canary"
  } : {
    strategy        = "rolling"
    max_unavailable = 1
  }
  canary = {
    steps        = [20, 50, 100]
    interval     = var.canary_interval
    min_requests = 20
  }
}

# nginx on every [checkbox] host: the static site, and /api/ to every app instance.
balancer "web" {
  for_each = host.checkbox
  on       = each.value
  listen   = var.listen
  routes = {
    "/"     = { static = "${var.source}/public_html" }
    "/api/" = service.checkbox
  }
}

# Alerts on the app's instances (from nginx's access logs) and on the app as a whole (its
# processes): on the dashboard and in /metrics; one firing on a canary's new instance stops
# the canary at once.
monitor "checkbox" {
  listen   = var.dashboard_port
  interval = "100ms"
  watch    = ["checkbox"]
  alerts = {
    errors = { service = "checkbox", metric = "error_ratio", above = var.alert_error_ratio, window = "10s" }
    slow   = { service = "checkbox", metric = "latency_p95", above = var.alert_latency_p95, window = "10s" }
    cpu    = { service = "checkbox", metric = "cpu", above = var.alert_cpu, window = "30s", scope = "group" }
    memory = { service = "checkbox", metric = "memory", above = var.alert_memory, window = "30s", scope = "group" }
  }
}

# Where nginx answers on each [checkbox] host.
output "url" {
  value = [for h in host.checkbox : "http://${h.address}:${var.listen}"]
}

output "dashboard" {
  value = "http://127.0.0.1:${var.dashboard_port}/"
}
