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
          "example.com/image" = "not-this:1"
          images              = "not-this:2"
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

resource "aws_ecs_task_definition" "worker" {
  family = "worker"
  container_definitions = jsonencode([
    {
      name      = "worker"
      image     = "public.ecr.aws/acme/worker:5" # the task's image
      essential = true
    },
    { name = "log-router", image = "amazon/aws-for-fluent-bit:2.32.0", essential = false },
    { name = "not-literal", image = local.sidecar_image },
  ])
}
