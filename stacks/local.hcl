# The embedded default: everything on this machine, no cloud, no root.
#   pipeline plan stacks/local.hcl && pipeline apply -auto-approve

variable "replicas" {
  type        = number
  default     = 3
  description = "How many replicas of the preview service to run"
}

variable "port" {
  type        = number
  default     = 8080
  description = "Where the balancer listens"
}

variable "dashboard_port" {
  type    = number
  default = 9090
}

host "app" {
  provider = "local"
}

# Feature flags: a redis primary with a mirror next to the instances; they read the mirror.
flags "ui" {
  on     = host.app
  values = { tables = true }
}

service "preview" {
  on       = host.app
  replicas = var.replicas
  source   = "../examples/preview"
  build    = "cargo build --release --quiet --target-dir target"
  run      = "./target/release/preview --port {{port}}"
  env      = { VERSION = "local", FLAGS_URL = flags.ui.local_url }
  health   = { path = "/health", interval = "500ms" }
  # Changes roll out as a progressive canary: the new version gets 10 %, then 50 % of the
  # balancer's traffic, judged against the old one, then all of it; a regression stops it at once.
  update = { strategy = "canary" }
  canary = {
    steps    = [10, 50, 100]
    interval = "15s"
    request  = { method = "POST", path = "/preview", body = jsonencode({ markdown = "# Canary\n\n| a | b |\n|---|---|\n| 1 | 2 |" }) }
    load     = 20 # this machine has no users: the canary sends its own requests, 20 a second
  }
}

balancer "front" {
  listen               = var.port
  routes               = { "/" = service.preview }
  client_max_body_size = "1m"
  retry_non_idempotent = true # POST /preview is a pure function: safe to send again
}

monitor "dashboard" {
  listen = var.dashboard_port
  watch  = ["preview"]
}

file "upstreams" {
  path     = "../.pipeline/out/upstreams.txt"
  template = "{{#each urls}}{{this}}\n{{/each}}"
  vars     = { urls = service.preview[*].url }
}

output "url" {
  value = balancer.front.url
}

output "dashboard" {
  value = monitor.dashboard.url
}

output "replicas" {
  value = service.preview[*].url
}
