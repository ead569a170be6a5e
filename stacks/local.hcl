# The embedded default: everything on this machine, no cloud, no root.
# pipeline plan stacks/local.hcl && pipeline apply -auto-approve

variable "replicas" {
  type        = number
  default     = 3
  description = "How many replicas of the preview service to run"
}

locals {
  app = "preview"
}

host "app" {
  provider = "local"
}

service "preview" {
  on       = host.app
  replicas = var.replicas
  source   = "../examples/preview"
  build    = "cargo build --release --quiet --target-dir target"
  run      = "./target/release/preview --port {{port}}"
  env      = { VERSION = "local" }
  health   = { path = "/health", interval = "500ms" }
}

file "upstreams" {
  path     = "../.pipeline/out/upstreams.txt"
  template = "{{#each urls}}{{this}}\n{{/each}}"
  vars     = { urls = service.preview[*].url }
}

output "urls" {
  value = service.preview[*].url
}

output "url" {
  value = service.preview[0].url
}
