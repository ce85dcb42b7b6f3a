# Terraform: images in nested blocks, heredocs and other attributes around.
terraform {
	required_providers {
		docker = { source = "kreuzwerker/docker" }
	}
}

locals {
  tag = "1.25"
}

resource "docker_container" "web" {
  name  = "web"
  image = "nginx:1.25"   # plain string literal
  command = ["nginx", "-g", "daemon off;"]
}

resource "kubernetes_deployment" "app" {
  metadata {
    name = "app"
  }
  spec {
    template {
      metadata {
        annotations = {
          image = "not:an-attribute-just-a-map-key"
        }
      }
      spec {
        container {
          name  = "app"
          image = "ghcr.io/acme/app:v2.3.1"
          args  = ["--config", "/etc/app.yaml"]
        }
        init_container {
          name    = "init"
          image   = "busybox:1.36@sha256:0000000000000000000000000000000000000000000000000000000000000000"
          command = ["sh", "-c", <<-EOT
            echo image = "not-this:1"
          EOT
          ]
        }
        container {
		  name  = "templated"
		  image = "nginx:${local.tag}"
        }
      }
    }
  }
}
