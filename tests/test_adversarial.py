"""The core's adversarial pieces (``ssl_engine.adversarial``), shared by inpainting and super-resolution."""

from __future__ import annotations

import torch

from ssl_engine.adversarial import Discriminator, adversarial_modules, discriminator_terms, generator_terms


def test_the_discriminator_logits_do_not_grow_with_its_weights() -> None:
    """Spectral normalisation: scaling every weight by 100 leaves the logits as they were (biases aside)."""
    discriminator = Discriminator().eval()
    images = torch.randn(4, 3, 32, 32)
    before = discriminator(images)
    with torch.no_grad():
        for name, parameter in discriminator.named_parameters():
            if name.endswith("original"):
                parameter.mul_(100)
    torch.testing.assert_close(discriminator(images), before)


def test_without_the_adversarial_branch_there_is_no_discriminator_and_no_term() -> None:
    aux = adversarial_modules(False)
    images = torch.randn(2, 3, 16, 16)
    assert len(aux) == 0 and generator_terms(aux, images) == {} and discriminator_terms(aux, images, images) == {}


def test_the_discriminator_term_trains_only_the_discriminator() -> None:
    aux = adversarial_modules(True)
    generator = torch.nn.Conv2d(3, 3, 1)
    generated = generator(torch.randn(2, 3, 16, 16))
    [term] = discriminator_terms(aux, torch.randn(2, 3, 16, 16), generated).values()
    term.backward()
    assert all(p.grad is None for p in generator.parameters())  # the generated images were detached
    assert all(p.grad is not None for p in aux.parameters())
    [fool] = generator_terms(aux, generated).values()
    assert fool.requires_grad and fool.grad_fn is not None
